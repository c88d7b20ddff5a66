//! `hvtrace bench trace`: what tracing costs, measured side by side in one
//! run on the same guest and workload, per engine (the QEMU engine, and
//! with `--backend kvm` hvtrace's own monitor next to it):
//! - the slowdown of `/bin/syscalls N` traced (syscalls+sched+irq) against
//!   untraced, timed by the guest itself around the workload;
//! - the cost per event: inside the tracer (the plugin's callbacks, the
//!   monitor's debug-exit handlers), and of the whole path as the guest
//!   sees it (its extra time over the events traced: exits included);
//! - against gdb counting a breakpoint through QEMU's gdbstub, the peer tool.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use engine::guest::GuestRun;

use crate::qemu;

/// What the measurement stops at.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("hvtrace {args} failed:\n{text}")]
    Hvtrace { args: String, text: String },
    #[error("the guest printed no COUNTS line with elapsed_ns")]
    NoCounts,
    #[error("starting qemu-system-x86_64")]
    SpawnQemu(#[source] io::Error),
    #[error("running gdb (Debian package gdb)")]
    Gdb(#[source] io::Error),
    #[error("the gdbstub guest did not finish its workload")]
    GdbstubGuest,
    #[error("reading {}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{0} has no cpus")]
    NoCpus(&'static str),
    #[error("no __x64_sys_getpid")]
    NoGetpid,
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Image(#[from] image_builder::ImageError),
    #[error(transparent)]
    Kernel(#[from] guest_symbols::ImageError),
}

type Result<T> = std::result::Result<T, BenchError>;

/// What `hvtrace bench trace` measures.
#[derive(Clone, Copy, Debug)]
pub struct BenchTrace {
    /// Rounds of /bin/syscalls for the slowdown.
    pub rounds: u32,
    /// getpid calls counted through gdb (0: no gdb peer).
    pub gdb_hits: u32,
    /// Untraced and traced runs alternate this many times.
    pub repeat: u32,
    /// hvtrace's KVM monitor side by side with the QEMU engine.
    pub kvm: bool,
    /// Also the QEMU engine with --time-transparent.
    pub time_transparent: bool,
}

/// One engine's figures (medians over the rounds).
struct EngineCost {
    engine: String,
    untraced_s: f64,
    traced_s: f64,
    events: u64,
    tracer_ns_per_event: f64,
    /// The monitor's own estimate of the tracer time the guest saw
    /// (`kvm.json`'s `tracer_time`; the KVM engine only).
    estimated_visible_s: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs hvtrace itself (run or record) on `engine` and returns its
/// console output.
fn hvtrace(engine: &str, args: &[&str], image: &Path) -> Result<String> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .arg(args[0])
        .args(["--backend", engine, "--kernel"])
        .arg(image.join("vmlinuz"))
        .arg("--initrd")
        .arg(image.join("initrd.img"))
        .args(&args[1..])
        .output()?;
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(BenchError::Hvtrace {
            args: args.join(" "),
            text,
        });
    }
    Ok(text)
}

/// The seconds /bin/syscalls measured itself (`elapsed_ns` of its COUNTS
/// line, CLOCK_MONOTONIC around its work).
fn elapsed(console: &str) -> Result<f64> {
    console
        .lines()
        .find_map(|l| {
            let counts = l.trim().strip_prefix("COUNTS ")?;
            let v: serde_json::Value = serde_json::from_str(counts).ok()?;
            Some(v["elapsed_ns"].as_u64()? as f64 / 1e9)
        })
        .ok_or(BenchError::NoCounts)
}

/// Boots with QEMU's gdbstub (nokaslr: link-time addresses are the
/// runtime ones) and, with `gdb`, counts hits of a breakpoint at `addr`
/// while `/bin/syscalls rounds` runs. Returns (hits, wall seconds).
fn gdb_run(image: &Path, addr: u64, rounds: u32, with_gdb: bool) -> Result<(u64, f64)> {
    let argv = vec!["/bin/syscalls".to_string(), rounds.to_string()];
    let run = GuestRun {
        kernel: image.join("vmlinuz"),
        initrd: image.join("initrd.img"),
        cmdline: engine::guest::kernel_cmdline(&argv, "nokaslr"),
        vcpus: 1,
        memory_mib: 512,
        timeout: std::time::Duration::from_secs(600),
        disk: None,
    };
    let port = 20000 + std::process::id() % 20000;
    let mut extra: Vec<std::ffi::OsString> = Vec::new();
    if with_gdb {
        extra.extend([
            "-gdb".into(),
            format!("tcp:127.0.0.1:{port}").into(),
            "-S".into(),
        ]);
    }
    let mut qemu = qemu::qemu_command(&run, &extra);
    qemu.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let started = Instant::now();
    let child = qemu.spawn().map_err(BenchError::SpawnQemu)?;
    let mut hits = 0;
    if with_gdb {
        let script = std::env::temp_dir().join(format!("hvtrace-bench-{port}.gdb"));
        std::fs::write(
            &script,
            format!(
                "set pagination off\nset confirm off\ntarget remote 127.0.0.1:{port}\n\
                 break *{addr:#x}\ncommands\nsilent\nprintf \"HIT\\n\"\ncontinue\nend\ncontinue\n"
            ),
        )?;
        let out = Command::new("gdb")
            .args(["-q", "-nx", "-batch", "-x"])
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .map_err(BenchError::Gdb)?;
        let _ = std::fs::remove_file(&script);
        hits = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.trim() == "HIT")
            .count() as u64;
    }
    let out = child.wait_with_output()?;
    if !String::from_utf8_lossy(&out.stdout).contains("HVTRACE-EXIT 0") {
        return Err(BenchError::GdbstubGuest);
    }
    Ok((hits, started.elapsed().as_secs_f64()))
}

/// Alternates untraced and traced runs of `cmd` on `engine` (so that
/// load on a shared machine hits both alike) and returns the medians.
fn measure(
    engine: &'static str,
    opts: &[&str],
    cmd: &[&str],
    image: &Path,
    repeat: u32,
) -> Result<EngineCost> {
    let out = std::env::temp_dir().join(format!(
        "hvtrace-bench-trace-{engine}-{}",
        std::process::id()
    ));
    let out_s = out.to_string_lossy().into_owned();
    let record = [
        &[
            "record",
            "--force",
            "--events",
            "syscalls,sched,irq",
            "-o",
            &out_s,
        ][..],
        opts,
        cmd,
    ]
    .concat();
    let label = [&[engine][..], opts].concat().join(" ");
    // Each engine's own report: the plugin's, the monitor's.
    let report_file = if engine == "kvm" {
        "kvm.json"
    } else {
        "plugin.json"
    };
    let (mut untraced, mut traced, mut per_event) = (Vec::new(), Vec::new(), Vec::new());
    let mut estimated = Vec::new();
    let mut events = 0;
    for round in 1..=repeat {
        eprintln!("bench trace: {label}: round {round}/{repeat}: untraced, then traced");
        untraced.push(elapsed(&hvtrace(
            engine,
            &[&["run"][..], opts, cmd].concat(),
            image,
        )?)?);
        traced.push(elapsed(&hvtrace(engine, &record, image)?)?);
        let path = out.join(report_file);
        let text = std::fs::read_to_string(&path).map_err(|source| BenchError::Read {
            path: path.clone(),
            source,
        })?;
        let report: serde_json::Value = serde_json::from_str(&text)?;
        let cpus = report["cpus"]
            .as_array()
            .ok_or(BenchError::NoCpus(report_file))?;
        events = cpus.iter().filter_map(|c| c["events"].as_u64()).sum();
        let busy_ns: u64 = cpus.iter().filter_map(|c| c["busy_ns"].as_u64()).sum();
        per_event.push(busy_ns as f64 / events.max(1) as f64);
        if let Some(ns) = report["tracer_time"]["guest_visible_ns"].as_u64() {
            estimated.push(ns as f64 / 1e9);
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    Ok(EngineCost {
        engine: label,
        untraced_s: median(untraced),
        traced_s: median(traced),
        events,
        tracer_ns_per_event: median(per_event),
        estimated_visible_s: (!estimated.is_empty()).then(|| median(estimated)),
    })
}

/// Measures and prints the figures (progress on stderr).
pub fn run(args: BenchTrace) -> Result<()> {
    let image = image_builder::build("6.1", true)?;
    let rounds = args.rounds.to_string();
    let cmd = ["--", "/bin/syscalls", &rounds];
    let engines: &[&'static str] = if args.kvm {
        &["kvm", "qemu"]
    } else {
        &["qemu"]
    };
    let mut costs = Vec::new();
    for engine in engines {
        costs.push(measure(engine, &[], &cmd, &image, args.repeat)?);
    }
    if args.time_transparent {
        costs.push(measure(
            "qemu",
            &["--time-transparent"],
            &cmd,
            &image,
            args.repeat,
        )?);
    }

    let (hits, gdb_per_hit_ns, gdb_wall, plain_wall) = if args.gdb_hits > 0 {
        let kernel = guest_symbols::KernelImage::open(image.join("vmlinuz"))?;
        let addr = kernel
            .symbols
            .addr("__x64_sys_getpid")
            .ok_or(BenchError::NoGetpid)?;
        eprintln!(
            "bench trace: gdb peer ({} getpid calls through the gdbstub)",
            args.gdb_hits
        );
        let (_, plain_wall) = gdb_run(&image, addr, args.gdb_hits, false)?;
        let (hits, gdb_wall) = gdb_run(&image, addr, args.gdb_hits, true)?;
        let per_hit = (gdb_wall - plain_wall).max(0.0) * 1e9 / hits.max(1) as f64;
        (hits, per_hit, gdb_wall, plain_wall)
    } else {
        (0, 0.0, 0.0, 0.0)
    };

    println!(
        "workload /bin/syscalls {rounds}, guest-timed, median of {}; traced: syscalls+sched+irq",
        args.repeat
    );
    for c in &costs {
        let extra_ns = (c.traced_s - c.untraced_s).max(0.0) * 1e9;
        println!(
            "{}: untraced {:.4} s, traced {:.4} s, slowdown {:.4}x; {} events, {:.2} us per event in the tracer, {:.2} us per event as the guest sees it",
            c.engine,
            c.untraced_s,
            c.traced_s,
            c.traced_s / c.untraced_s.max(1e-9),
            c.events,
            c.tracer_ns_per_event / 1e3,
            extra_ns / c.events.max(1) as f64 / 1e3
        );
        if let Some(est) = c.estimated_visible_s {
            println!(
                "{}: the monitor's estimate of the tracer time the guest saw: {est:.4} s, against {:.4} s measured by the guest ({:.3}x)",
                c.engine,
                extra_ns / 1e9,
                est * 1e9 / extra_ns.max(1.0)
            );
        }
    }
    if let [kvm, qemu, ..] = &costs[..] {
        if kvm.engine == "kvm" {
            println!(
                "kvm/qemu: slowdown {:.2}, tracer time per event {:.2}",
                (kvm.traced_s / kvm.untraced_s.max(1e-9))
                    / (qemu.traced_s / qemu.untraced_s.max(1e-9)),
                kvm.tracer_ns_per_event / qemu.tracer_ns_per_event.max(1e-9)
            );
        }
    }
    if args.gdb_hits > 0 {
        println!(
            "gdb via QEMU's gdbstub: {hits} hits, {:.1} ms per hit ({gdb_wall:.1} s against {plain_wall:.1} s without gdb)",
            gdb_per_hit_ns / 1e6
        );
        for c in &costs {
            println!(
                "hvtrace {}/gdb cost per event: 1/{:.0}",
                c.engine,
                gdb_per_hit_ns / c.tracer_ns_per_event.max(1e-9)
            );
        }
    }
    Ok(())
}
