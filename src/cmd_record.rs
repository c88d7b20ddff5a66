//! `hvtrace record`: boot the guest under QEMU TCG with the hvtrace plugin,
//! trace the whole system while a command runs, and write the trace.
//!
//! The host prepares a probe plan (`introspect::ProbePlan`: link-time
//! addresses from the image's kallsyms, structure offsets from its BTF, the
//! syscall table) and hands its path to the plugin; the plugin finds the
//! KASLR slide in the running guest and writes one raw record stream per
//! vCPU (`raw/cpuN.bin`), which the host turns into the trace.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use introspect::codec::decode_all;
use introspect::plan::{EventClasses, Offsets, ProbePlan, Symbols, Syscall};
use introspect::{Event, Record};

use crate::guest;
use crate::run::{choose_backend, outcome, Backend, GuestOptions};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every selected event, exact order per vCPU.
    Trap,
    /// Statistical sampling (not on the QEMU engine yet).
    Sample,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferMode {
    /// A full buffer pauses the vCPU: nothing is lost.
    Lossless,
    /// A full buffer drops events and counts them.
    Discard,
    /// Keep the newest events in memory, write them at the end.
    FlightRecorder,
}

#[derive(clap::Args, Debug)]
pub struct RecordArgs {
    #[command(flatten)]
    pub guest: GuestOptions,
    /// Event classes: any of syscalls,sched,irq,proc (or all).
    #[arg(long, default_value = "all")]
    pub events: String,
    #[arg(long, value_enum, default_value = "trap")]
    pub mode: Mode,
    #[arg(long, value_enum, default_value = "lossless")]
    pub buffer: BufferMode,
    /// Output folder (the CTF trace goes to DIR/kernel).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: PathBuf,
    /// The TCG plugin (default: libhvtrace_tcg.so next to hvtrace, or $HVTRACE_TCG_PLUGIN).
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// The command to run in the guest, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

pub fn run(args: RecordArgs) -> Result<i32> {
    let interrupt = guest::install_interrupt_flag();
    let Some(events) = EventClasses::parse(&args.events) else {
        bail!("--events: expected a list of syscalls,sched,irq,proc (or all)");
    };
    if args.mode == Mode::Sample {
        bail!("--mode sample is not available on the QEMU engine yet; use --mode trap");
    }
    if args.buffer != BufferMode::Lossless {
        eprintln!("hvtrace: note: the QEMU engine records losslessly; --buffer is ignored");
    }
    match choose_backend(args.guest.backend)? {
        Backend::Qemu => {}
        Backend::Kvm => bail!("--backend kvm: tracing on hvtrace's KVM monitor is not available yet (use --backend qemu)"),
        Backend::Auto => unreachable!("choose_backend resolves auto"),
    }
    let run = args.guest.guest_run(&args.command)?;
    let out = &args.output;
    std::fs::create_dir_all(out.join("raw"))
        .with_context(|| format!("creating {}", out.display()))?;
    for entry in std::fs::read_dir(out.join("raw"))? {
        let _ = std::fs::remove_file(entry?.path());
    }
    let out_abs = std::fs::canonicalize(out)?;
    let plugin = match &args.plugin {
        Some(p) => p.clone(),
        None => locate_plugin()?,
    };
    let t0 = Instant::now();
    let mut plan = build_plan(&run.kernel).context("preparing the probe plan")?;
    plan.events = events;
    plan.out_dir = path_str(&out_abs)?.to_string();
    plan.statedump_exec = args.command[0].clone();
    let plan_path = out_abs.join("probe-plan.json");
    std::fs::write(&plan_path, plan.to_json())?;
    let prep = t0.elapsed();

    let mut extra = args.guest.qemu_extra_args();
    extra.push("-plugin".into());
    extra.push(OsString::from(format!(
        "{},plan={}",
        path_str(&plugin)?,
        path_str(&plan_path)?
    )));
    let cmd = guest::qemu_command(&run, &extra);
    let t1 = Instant::now();
    let end = guest::run_qemu(cmd, run.timeout, &interrupt, &mut std::io::stderr())?;
    let wall = t1.elapsed();

    let summary = summarize(&out_abs, &plan)?;
    eprintln!(
        "hvtrace: record: {} events ({} per vCPU: {:?}), 0 lost, guest run {:.1} s, symbols {:.1} s",
        summary.total,
        summary.per_cpu.len(),
        summary.per_cpu,
        wall.as_secs_f64(),
        prep.as_secs_f64()
    );
    for (class, n) in &summary.per_class {
        eprintln!("hvtrace: record:   {class}: {n}");
    }
    if !matches!(end, guest::GuestEnd::Exited(_)) {
        eprintln!(
            "hvtrace: record: the run ended early ({end:?}); the trace in {} holds everything up to that point",
            out.display()
        );
    }
    outcome(end, run.timeout)
}

fn path_str(p: &Path) -> Result<&str> {
    match p.to_str() {
        Some(s) if !s.contains(',') => Ok(s),
        _ => bail!(
            "{}: paths given to QEMU must be UTF-8 without commas",
            p.display()
        ),
    }
}

/// The plugin: `$HVTRACE_TCG_PLUGIN`, or `libhvtrace_tcg.so` next to the
/// hvtrace binary (cargo puts both in `target/<profile>/`; test binaries
/// live one level down in `deps/`).
pub fn locate_plugin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HVTRACE_TCG_PLUGIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let mut tried = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        let cand = dir.join("libhvtrace_tcg.so");
        if cand.is_file() {
            return Ok(cand);
        }
        tried.push(cand);
    }
    bail!(
        "the TCG plugin is not built (looked for {tried:?}); build it with `cargo build -p hvtrace-tcg` (same profile as hvtrace)"
    )
}

/// Kernel image → probe plan, from the image alone.
pub fn build_plan(kernel: &Path) -> Result<ProbePlan> {
    let image = std::fs::read(kernel).with_context(|| format!("reading {}", kernel.display()))?;
    let vmlinux = if guest_symbols::bzimage::is_bzimage(&image) {
        guest_symbols::bzimage::payload(&image)?.decompress()?
    } else {
        image
    };
    let elf = guest_symbols::elf::KernelElf::parse(&vmlinux)?;
    let ks = guest_symbols::kallsyms::recover(&vmlinux)?;
    let mut by_name: BTreeMap<&str, u64> = BTreeMap::new();
    let mut by_addr: BTreeMap<u64, &str> = BTreeMap::new();
    for s in &ks.symbols {
        by_name.entry(s.name.as_str()).or_insert(s.addr);
        if s.name.starts_with("__x64_sys_") {
            by_addr.insert(s.addr, s.name.as_str());
        }
    }
    let sym = |n: &str| by_name.get(n).copied().unwrap_or(0);
    let need = |n: &str| -> Result<u64> {
        by_name
            .get(n)
            .copied()
            .with_context(|| format!("symbol {n} not in the image's kallsyms"))
    };
    let symbols = Symbols {
        linux_banner: need("linux_banner")?,
        entry_syscall_64: sym("entry_SYSCALL_64"),
        entry_syscall_64_size: 0,
        do_syscall_64: need("do_syscall_64")?,
        switch_to: need("__switch_to")?,
        try_to_wake_up: sym("try_to_wake_up"),
        wake_up_new_task: sym("wake_up_new_task"),
        begin_new_exec: sym("begin_new_exec"),
        do_exit: sym("do_exit"),
        handle_irq_event: sym("handle_irq_event"),
        sysvec_apic_timer_interrupt: sym("sysvec_apic_timer_interrupt"),
        init_task: need("init_task")?,
    };
    // The banner as the image holds it ("Linux version <release> (...").
    let aspace = elf.address_space();
    let banner = aspace
        .cstr(&vmlinux, symbols.linux_banner, 256)
        .context("reading linux_banner from the image")?;
    let release = banner
        .strip_prefix("Linux version ")
        .and_then(|r| r.split_whitespace().next())
        .context("linux_banner does not start with \"Linux version\"")?
        .to_string();
    let btf = elf
        .section_data(&vmlinux, ".BTF")
        .context("the image has no .BTF section")?;
    let btf = mini_btf::Btf::parse(btf).context("parsing .BTF")?;
    let offsets = offsets_from_btf(&btf, &by_name)?;
    // Syscall numbers: the kernel's own sys_call_table (pointers to __x64_sys_*).
    let mut syscalls = Vec::new();
    let table = sym("sys_call_table");
    for nr in 0..1024u32 {
        let Some(p) = aspace.u64(&vmlinux, table + u64::from(nr) * 8) else {
            break;
        };
        let Some(name) = by_addr.get(&p) else { break };
        let name = &name["__x64_sys_".len()..];
        if name == "ni_syscall" {
            continue;
        }
        syscalls.push(Syscall {
            nr,
            name: name.to_string(),
            args: Vec::new(),
            string_args: string_args_of(name),
        });
    }
    if table == 0 || syscalls.is_empty() {
        bail!("no syscall table in the image");
    }
    Ok(ProbePlan {
        banner_prefix: format!("Linux version {release} "),
        kernel_release: release,
        symbols,
        offsets,
        syscalls,
        ..ProbePlan::default()
    })
}

/// Which arguments are user path strings (until guest_symbols exports the
/// kernel's syscall metadata with argument types).
fn string_args_of(name: &str) -> u8 {
    match name {
        "open" | "creat" | "execve" | "stat" | "lstat" | "access" | "chdir" | "mkdir" | "rmdir"
        | "unlink" | "readlink" | "chmod" | "chown" | "truncate" => 1,
        "openat" | "execveat" | "newfstatat" | "faccessat" | "faccessat2" | "mkdirat"
        | "unlinkat" | "readlinkat" | "fchmodat" | "statx" => 2,
        _ => 0,
    }
}

fn offsets_from_btf(btf: &mini_btf::Btf, syms: &BTreeMap<&str, u64>) -> Result<Offsets> {
    let m = |s: &str, f: &str| -> Result<u64> {
        btf.member_offset(s, f)
            .with_context(|| format!("BTF has no {s}.{f}"))
    };
    let (task_state, task_state_size) = match btf.member_offset("task_struct", "__state") {
        Some(o) => (o, 4),
        None => (m("task_struct", "state")?, 8),
    };
    // ≥ 6.2 (and some backports): pcpu_hot.current_task; else the per-cpu
    // variable current_task. Per-cpu symbols are offsets in the per-cpu area.
    let percpu_current_task = match (
        syms.get("pcpu_hot"),
        btf.member_offset("pcpu_hot", "current_task"),
    ) {
        (Some(&base), Some(off)) => base + off,
        _ => *syms
            .get("current_task")
            .context("neither pcpu_hot nor current_task in kallsyms")?,
    };
    Ok(Offsets {
        task_pid: m("task_struct", "pid")?,
        task_tgid: m("task_struct", "tgid")?,
        task_comm: m("task_struct", "comm")?,
        task_prio: m("task_struct", "prio")?,
        task_state,
        task_state_size,
        task_real_parent: m("task_struct", "real_parent")?,
        task_tasks: m("task_struct", "tasks")?,
        task_cpu: m("task_struct", "thread_info.cpu").or_else(|_| m("task_struct", "cpu"))?,
        percpu_current_task,
        binprm_filename: m("linux_binprm", "filename")?,
        irq_desc_irq: m("irq_desc", "irq_data.irq")?,
        irq_desc_action: m("irq_desc", "action")?,
        irqaction_name: m("irqaction", "name")?,
    })
}

/// What the trace holds, counted from the raw streams.
#[derive(Debug, Default)]
pub struct Summary {
    pub total: u64,
    pub per_cpu: Vec<u64>,
    pub per_class: BTreeMap<&'static str, u64>,
}

/// Reads every raw stream of `out` (records in per-vCPU order).
pub fn read_records(out: &Path) -> Result<Vec<Vec<Record>>> {
    let mut cpus = Vec::new();
    for cpu in 0.. {
        let p = out.join("raw").join(format!("cpu{cpu}.bin"));
        let Ok(data) = std::fs::read(&p) else { break };
        cpus.push(decode_all(&data).0);
    }
    Ok(cpus)
}

fn summarize(out: &Path, _plan: &ProbePlan) -> Result<Summary> {
    let mut s = Summary::default();
    for recs in read_records(out)? {
        s.per_cpu.push(recs.len() as u64);
        s.total += recs.len() as u64;
        for r in &recs {
            let class = match r.event {
                Event::SyscallEntry { .. } | Event::SyscallExit { .. } => "syscalls",
                Event::SchedSwitch { .. } | Event::SchedWaking { .. } => "sched",
                Event::IrqEntry { .. } | Event::IrqExit { .. } => "irq",
                Event::Statedump { .. } => "statedump",
                _ => "proc",
            };
            *s.per_class.entry(class).or_default() += 1;
        }
    }
    Ok(s)
}

/// A minimal BTF reader: struct member offsets by name (nested with dots).
mod mini_btf {
    use std::collections::HashMap;

    pub struct Btf {
        /// type id → (kind, name, size_or_type, members (name, type, bit offset))
        types: Vec<(u32, String, u32, Vec<(String, u32, u64)>)>,
        structs: HashMap<String, u32>,
    }

    fn u32_at(d: &[u8], o: usize) -> Option<u32> {
        Some(u32::from_le_bytes(d.get(o..o + 4)?.try_into().ok()?))
    }

    impl Btf {
        pub fn parse(d: &[u8]) -> Option<Btf> {
            if d.get(0..2)? != [0x9f, 0xeb] {
                return None;
            }
            let hdr = u32_at(d, 4)? as usize;
            let (toff, tlen) = (u32_at(d, 8)? as usize, u32_at(d, 12)? as usize);
            let soff = u32_at(d, 16)? as usize;
            let types_d = d.get(hdr + toff..hdr + toff + tlen)?;
            let strs = d.get(hdr + soff..)?;
            let name = |off: u32| -> String {
                let s = strs.get(off as usize..).unwrap_or(&[]);
                let n = s.iter().position(|&c| c == 0).unwrap_or(0);
                String::from_utf8_lossy(&s[..n]).into_owned()
            };
            let mut types = vec![(0, String::new(), 0, Vec::new())];
            let mut structs = HashMap::new();
            let mut o = 0usize;
            while o + 12 <= types_d.len() {
                let (name_off, info, st) = (
                    u32_at(types_d, o)?,
                    u32_at(types_d, o + 4)?,
                    u32_at(types_d, o + 8)?,
                );
                let kind = (info >> 24) & 0x1f;
                let vlen = (info & 0xffff) as usize;
                let kflag = info >> 31 == 1;
                o += 12;
                let mut members = Vec::new();
                let extra = match kind {
                    1 | 14 | 17 => 4,
                    3 => 12,
                    4 | 5 => {
                        for i in 0..vlen {
                            let m = o + i * 12;
                            let off = u32_at(types_d, m + 8)?;
                            let bits = if kflag { off & 0xff_ffff } else { off };
                            members.push((
                                name(u32_at(types_d, m)?),
                                u32_at(types_d, m + 4)?,
                                u64::from(bits),
                            ));
                        }
                        vlen * 12
                    }
                    6 | 13 => vlen * 8,
                    15 | 19 => vlen * 12,
                    _ => 0,
                };
                o += extra;
                let id = types.len() as u32;
                let n = name(name_off);
                if kind == 4 && !n.is_empty() && !members.is_empty() {
                    structs.entry(n.clone()).or_insert(id);
                }
                types.push((kind, n, st, members));
            }
            Some(Btf { types, structs })
        }

        /// Resolves typedef/volatile/const/restrict/type-tag to the underlying type.
        fn resolve(&self, mut id: u32) -> u32 {
            for _ in 0..32 {
                match self.types.get(id as usize) {
                    Some((8..=11 | 18, _, next, _)) => id = *next,
                    _ => break,
                }
            }
            id
        }

        /// Byte offset of `path` ("a.b.c") in struct `name`; anonymous
        /// members are searched through.
        pub fn member_offset(&self, name: &str, path: &str) -> Option<u64> {
            let mut id = *self.structs.get(name)?;
            let mut total = 0u64;
            for part in path.split('.') {
                let (bits, ty) = self.find(id, part, 0)?;
                total += bits;
                id = self.resolve(ty);
            }
            Some(total / 8)
        }

        fn find(&self, id: u32, field: &str, depth: u32) -> Option<(u64, u32)> {
            let (_, _, _, members) = self.types.get(id as usize)?;
            for (n, ty, bits) in members {
                if n == field {
                    return Some((*bits, *ty));
                }
            }
            if depth < 4 {
                for (n, ty, bits) in members {
                    if n.is_empty() {
                        if let Some((b, t)) = self.find(self.resolve(*ty), field, depth + 1) {
                            return Some((bits + b, t));
                        }
                    }
                }
            }
            None
        }
    }
}
