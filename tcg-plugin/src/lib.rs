//! QEMU TCG plugin engine: runs `introspect` inside QEMU.
//!
//! Arguments: `plan=PATH` (a JSON [`introspect::ProbePlan`]). Output (in
//! the plan's `out_dir`): `kernel/` (the CTF trace, through ltt-writer),
//! with `raw: true` also `raw/cpuN.bin` (records, see
//! `introspect::codec`) and `plugin.json` (what the plugin found and did).
//! QEMU's stderr is not used: it is unreliable for plugins.

use record_ctf as ctf;
mod clock;
mod resolved;
mod sample;
mod slots;
mod state;
mod triggers;
mod user;
mod vcpu;

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use introspect::decode::SyscallStrings;
use introspect::kernel::find_slide;
use introspect::probes::plan_probes;
use introspect::runtime::{string_table, StatedumpGate, VcpuTracer};
use introspect::{Kernel, ProbeKind, ProbePlan};
use qemu_plugin::{
    install::{Args, Info, Value},
    plugin::{HasCallbacks, Register},
    qemu_plugin_register_atexit_cb, register, CallbackFlags, PluginId, TranslationBlock, VCPUIndex,
};

use slots::{Slot, TraceSink, VcpuRuntime};
use state::{chain, note, now_ns, Global, G};
use vcpu::QemuVcpu;

/// Tasks a statedump holds without allocating on the trap path.
const STATEDUMP_TASKS: usize = 4096;

/// Translation-time state (under the qemu-plugin crate's lock).
#[derive(Default)]
struct Hv {
    probes: HashMap<u64, ProbeKind>,
    /// Return sites: the instruction after a call to a function whose return we trace.
    ret_sites: HashMap<u64, ProbeKind>,
    /// Runtime address of a callee → kind of its return sites.
    call_targets: HashMap<u64, ProbeKind>,
    /// Runtime address → user probes (`--probe`) placed there.
    user_sites: HashMap<u64, Vec<usize>>,
    slide_tries: u32,
    trig: triggers::Sites,
}

impl Hv {
    fn arm(&mut self, g: &Global, slide: u64) {
        self.trig.arm(slide);
        // Unlimited budget: translation-time callbacks cost nothing until hit.
        let set = plan_probes(&g.plan, slide, None);
        for p in &set.entries {
            self.probes.insert(p.addr, p.kind);
        }
        for p in &set.returns {
            self.call_targets.insert(p.addr, p.kind);
        }
        for (kind, why) in &set.dropped {
            note(format!("not covered: {kind:?}: {why}"));
        }
        for (addr, i) in user::arm(&g.plan, slide) {
            self.user_sites.entry(addr).or_default().push(i);
        }
    }
}

fn on_hit(kind: ProbeKind, vcpu: VCPUIndex) {
    let Some(g) = G.get() else { return };
    let Some(k) = g.kernel.get() else { return };
    let Some(slot) = g.slots.get(vcpu as usize) else {
        return;
    };
    // SAFETY: this callback runs on the thread of vCPU `vcpu`.
    let Some(rt) = (unsafe { slot.get() }).as_mut() else {
        return;
    };
    g.hits.fetch_add(1, Ordering::Relaxed);
    let t0 = Instant::now();
    hit(g, k, kind, rt);
    rt.busy_ns += t0.elapsed().as_nanos() as u64;
}

/// Sample mode: called every `BLOCKS_PER_CHECK` blocks; samples when the
/// period has passed.
fn on_sample_check(vcpu: VCPUIndex) {
    let Some(g) = G.get() else { return };
    let Some(s) = &g.sampler else { return };
    s.reset(vcpu);
    let Some(slot) = g.slots.get(vcpu as usize) else {
        return;
    };
    // SAFETY: this callback runs on the thread of vCPU `vcpu`.
    let Some(rt) = (unsafe { slot.get() }).as_mut() else {
        return;
    };
    let now = now_ns(g);
    if now.saturating_sub(rt.last_sample_ns) < s.period_ns {
        return;
    }
    rt.last_sample_ns = now;
    on_hit(ProbeKind::Sample, vcpu);
}

fn hit(g: &Global, k: &Kernel, kind: ProbeKind, rt: &mut VcpuRuntime) {
    let strings = SyscallStrings(&g.strings);
    let now = || now_ns(g);
    rt.tracer
        .hit(kind, &rt.ctx, k, &strings, &g.statedump, now, &mut rt.sink);
}

impl Register for Hv {
    fn register(&mut self, id: PluginId, args: &Args, info: &Info) -> qemu_plugin::Result<()> {
        let plan = match args.parsed.get("plan") {
            Some(Value::String(p)) => ProbePlan::load(p).ok(),
            _ => None,
        };
        let plan = plan.unwrap_or_default();
        let max = info
            .system
            .as_ref()
            .map(|s| s.max_vcpus.max(s.smp_vcpus))
            .unwrap_or(1)
            .clamp(1, 1024) as usize;
        let strings = string_table(&plan);
        let statedump = StatedumpGate::new(&plan.statedump_exec);
        let out = plan.out_dir.clone();
        if !out.is_empty() {
            if plan.raw {
                let _ = std::fs::create_dir_all(format!("{out}/raw"));
            }
            let _ = std::fs::write(format!("{out}/plugin-started"), b"1\n");
            reserve_report(&out);
        }
        // The trace clock: taken together so that ts + offset is wall time
        // (in time-transparent mode, wall time at boot plus guest time).
        let origin = ltt_writer::Epoch::now();
        let clock = clock::TraceClock::new(plan.instruction_clock_shift, origin.instant);
        let epoch_unix_ns = origin.unix_ns;
        let ncpus = info
            .system
            .as_ref()
            .map(|s| s.smp_vcpus)
            .unwrap_or(1)
            .clamp(1, max as i64) as u32;
        let (writer, producers) = if out.is_empty() {
            (None, Vec::new())
        } else {
            let mut catalog = ctf::catalog_checked(&plan).unwrap_or_else(|e| {
                let _ = std::fs::write(format!("{out}/plugin-error"), format!("catalog: {e}\n"));
                ctf::catalog(&ProbePlan::default())
            });
            triggers::declare(args, &mut catalog);
            let mut cfg = ltt_writer::TraceConfig::new(ncpus, catalog);
            cfg.env.kernel_release = plan.kernel_release.clone();
            cfg.clock_offset_ns = epoch_unix_ns;
            if plan.subbuf_size > 0 {
                cfg.packet_size = plan.subbuf_size as usize;
            }
            if plan.num_subbuf > 0 {
                cfg.packets_per_cpu = plan.num_subbuf as usize;
            }
            cfg.relayd = relayd_config(&plan, &out);
            cfg.policy = match plan.buffer.as_str() {
                "discard" => ltt_writer::Policy::Discard,
                "flight-recorder" => ltt_writer::Policy::FlightRecorder {
                    bytes_per_cpu: (plan.flight_bytes as usize).max(cfg.packet_size * 2),
                },
                _ => ltt_writer::Policy::Lossless,
            };
            match ltt_writer::TraceWriter::create(std::path::Path::new(&out), cfg) {
                Ok((w, p)) => (Some(w), p.into_iter().map(Some).collect()),
                Err(e) => {
                    let _ = std::fs::write(format!("{out}/plugin-error"), format!("{e}\n"));
                    (None, Vec::new())
                }
            }
        };
        triggers::start(writer.as_ref(), &out);
        let sample_hz = plan.sample_hz;
        let _ = G.set(Global {
            plan,
            kernel: OnceLock::new(),
            strings,
            slots: (0..max).map(|_| Slot::empty()).collect(),
            statedump,
            clock,
            epoch_unix_ns,
            hits: AtomicU64::new(0),
            reg_names: Mutex::new(Vec::new()),
            notes: Mutex::new(Vec::new()),
            writer: Mutex::new(writer),
            producers: Mutex::new(producers),
            sampler: (sample_hz > 0).then(|| sample::Sampler::new(sample_hz)),
        });
        qemu_plugin_register_atexit_cb(id, |_| at_exit())?;
        Ok(())
    }
}

impl HasCallbacks for Hv {
    fn on_vcpu_init(&mut self, _id: PluginId, vcpu: VCPUIndex) -> qemu_plugin::Result<()> {
        let Some(g) = G.get() else { return Ok(()) };
        let (ctx, names) = QemuVcpu::new(vcpu);
        if let Ok(mut r) = g.reg_names.lock() {
            if r.is_empty() {
                *r = names;
            }
        }
        let out = if g.plan.out_dir.is_empty() || !g.plan.raw {
            None
        } else {
            File::create(format!("{}/raw/cpu{vcpu}.bin", g.plan.out_dir))
                .ok()
                .map(|f| BufWriter::with_capacity(1 << 20, f))
        };
        if let Some(slot) = g.slots.get(vcpu as usize) {
            // vCPU init runs on the vCPU's own thread, before any of its
            // trap callbacks.
            // SAFETY: so nothing else accesses this vCPU's slot now.
            let s = unsafe { slot.get() };
            let producer = g
                .producers
                .lock()
                .ok()
                .and_then(|mut p| p.get_mut(vcpu as usize).and_then(Option::take));
            *s = Some(VcpuRuntime {
                ctx,
                tracer: VcpuTracer::new(vcpu, STATEDUMP_TASKS).with_deferral(),
                sink: TraceSink::new(out, producer),
                busy_ns: 0,
                last_sample_ns: 0,
            });
        }
        Ok(())
    }

    fn on_translation_block_translate(
        &mut self,
        _id: PluginId,
        tb: TranslationBlock,
    ) -> qemu_plugin::Result<()> {
        let Some(g) = G.get() else { return Ok(()) };
        g.clock.instrument(&tb);
        if let Some(s) = &g.sampler {
            s.instrument(&tb, on_sample_check);
        }
        if tb.vaddr() < 0xffff_ffff_8000_0000 {
            return Ok(());
        }
        if g.kernel.get().is_none() {
            if self.slide_tries > 64 {
                return Ok(());
            }
            self.slide_tries += 1;
            let probe_ctx = vcpu::MemOnly;
            let banner = g.plan.banner_prefix.as_bytes();
            match find_slide(&probe_ctx, g.plan.symbols.linux_banner, banner) {
                Ok(slide) => {
                    let _ = g.kernel.set(Kernel::new(&g.plan, slide));
                    self.arm(g, slide);
                    note(format!("slide {slide:#x} found at tb {:#x}", tb.vaddr()));
                }
                Err(e) => {
                    note(format!("tb {:#x}: {e}", tb.vaddr()));
                    return Ok(());
                }
            }
        }
        for insn in tb.instructions() {
            let va = insn.vaddr();
            let kind = self
                .probes
                .get(&va)
                .or_else(|| self.ret_sites.get(&va))
                .copied();
            if let Some(kind) = kind {
                insn.register_execute_callback_flags(
                    move |vcpu| on_hit(kind, vcpu),
                    CallbackFlags::QEMU_PLUGIN_CB_R_REGS,
                );
            }
            for &i in self.user_sites.get(&va).map(Vec::as_slice).unwrap_or(&[]) {
                insn.register_execute_callback_flags(
                    move |vcpu| user::on_hit(i, vcpu),
                    CallbackFlags::QEMU_PLUGIN_CB_R_REGS,
                );
            }
            self.trig.instrument(&insn);
            if insn.size() == 5 && !self.call_targets.is_empty() {
                let mut b = [0u8; 5];
                if insn.read_data(&mut b) == 5 && b[0] == 0xe8 {
                    let rel = i32::from_le_bytes([b[1], b[2], b[3], b[4]]);
                    let target = va.wrapping_add(5).wrapping_add(rel as i64 as u64);
                    if let Some(&k) = self.call_targets.get(&target) {
                        self.ret_sites.insert(va + 5, k);
                    }
                }
            }
        }
        Ok(())
    }
}

fn at_exit() {
    let Some(g) = G.get() else { return };
    triggers::before_finish();
    let mut per_cpu = Vec::new();
    for (i, slot) in g.slots.iter().enumerate() {
        // SAFETY: QEMU calls the exit hook after all vCPUs stopped.
        if let Some(rt) = unsafe { slot.get() }.as_mut() {
            rt.flush();
            let sink = &mut rt.sink;
            // Dropping the producer closes its last packet.
            sink.producer = None;
            if let Some(e) = &sink.first_ctf_error {
                note(format!("cpu {i}: first trace write error: {}", chain(e)));
            }
            let t = &rt.tracer;
            let mut by_event = t.by_event;
            by_event[record_ctf::user::EVENT_TAG] = sink.user.written;
            per_cpu.push(format!(
                "{{\"cpu\":{i},\"events\":{},\"busy_ns\":{},\"write_errors\":{},\"ctf_errors\":{},\"by_kind\":{:?},\"by_event\":{:?},\"strings_late\":{:?}}}",
                t.events + sink.user.written,
                rt.busy_ns,
                sink.write_errors,
                sink.ctf_errors,
                t.by_kind,
                by_event,
                t.strings_late()
            ));
        }
    }
    if let Ok(mut p) = g.producers.lock() {
        p.clear();
    }
    let ctf = match g.writer.lock().ok().and_then(|mut w| w.take()) {
        Some(w) => match w.finish() {
            Ok(r) => format!(
                "{{\"events\":{},\"discarded\":{},\"discards\":{},\"packets\":{},\"bytes\":{},\"relayd\":{}}}",
                r.events(),
                r.discarded(),
                r.discards_json(),
                r.packets_written,
                r.bytes_written,
                r.relayd
                    .as_ref()
                    .map_or("null".to_string(), |r| r.to_json().to_string())
            ),
            Err(e) => format!("{{\"error\":{:?}}}", chain(&e)),
        },
        None => "null".to_string(),
    };
    triggers::after_finish();
    if g.plan.out_dir.is_empty() {
        return;
    }
    let slide = g.kernel.get().map(|k| k.slide as i64).unwrap_or(-1);
    let regs = g.reg_names.lock().map(|r| r.join(" ")).unwrap_or_default();
    let notes = g.notes.lock().map(|n| n.clone()).unwrap_or_default();
    let instructions = g
        .clock
        .instructions()
        .map_or("null".to_string(), |n| n.to_string());
    let json = format!(
        "{{\"slide\":{slide},\"ctf\":{ctf},\"epoch_unix_ns\":{},\"instructions\":{instructions},\"hits\":{},\"cpus\":[{}],\"registers\":{:?},\"notes\":{:?}}}\n",
        g.epoch_unix_ns,
        g.hits.load(Ordering::Relaxed),
        per_cpu.join(","),
        regs,
        notes
    );
    write_report(&g.plan.out_dir, &json);
}

/// The relayd to stream to (`--relayd`), from the plan; an address the
/// host checked but this side cannot read is said in `plugin-error`.
fn relayd_config(plan: &ProbePlan, out: &str) -> Option<ltt_writer::RelaydConfig> {
    if plan.relayd.is_empty() {
        return None;
    }
    match ltt_writer::relayd::Endpoint::parse(&plan.relayd) {
        Ok(ep) => Some(ltt_writer::RelaydConfig::new(
            ep,
            &plan.relayd_session,
            &plan.relayd_hostname,
        )),
        Err(e) => {
            let _ = std::fs::write(format!("{out}/plugin-error"), format!("relayd: {e}\n"));
            None
        }
    }
}

/// Room kept for `plugin.json` from the start, so that the report (how
/// far the trace got) is still written when the trace filled the disk.
const REPORT_ROOM: usize = 256 << 10;

fn reserve_report(out: &str) {
    let _ = std::fs::write(format!("{out}/plugin.json"), vec![b' '; REPORT_ROOM]);
}

/// Writes the report over the reserved room (no new space needed when it
/// fits), then cuts the rest.
fn write_report(out: &str, json: &str) {
    use std::io::Write;
    let path = format!("{out}/plugin.json");
    let Ok(mut f) = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        // Over the reserved room: truncating would give its space back.
        .truncate(false)
        .open(&path)
    else {
        return;
    };
    if f.write_all(json.as_bytes()).is_ok() {
        let _ = f.set_len(json.len() as u64);
    }
}

register!(Hv::default());
