//! What `hvtrace record` says after a run on the QEMU engine, from the
//! plugin's report (`plugin.json`): events per vCPU and class, tracer
//! time, and how far the trace got when the run or the disk gave out.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use engine::guest::GuestEnd;

/// A finished run of the QEMU engine.
pub struct QemuRun<'a> {
    /// The output folder as given, and resolved.
    pub out: &'a Path,
    pub out_abs: &'a Path,
    /// Wall time of the guest run, and of the preparation (symbols).
    pub wall: Duration,
    pub prep: Duration,
    /// The untraced run of `--baseline`: its wall time and end.
    pub baseline: Option<&'a (Duration, GuestEnd)>,
    pub end: &'a GuestEnd,
    /// Whether `end` is one the run asked for (not cut short).
    pub normal_end: bool,
}

/// Prints the summary; returns why the trace is incomplete, if it is
/// (its writer failed, e.g. on a full disk).
pub fn print_qemu(r: &QemuRun) -> Option<String> {
    let report: serde_json::Value = std::fs::read_to_string(r.out_abs.join("plugin.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let summary = summarize(&report);
    let lost = report["ctf"]["discarded"].as_u64().unwrap_or(0);
    let busy: u64 = report["cpus"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["busy_ns"].as_u64()).sum())
        .unwrap_or(0);
    eprintln!(
        "hvtrace: record: {} events, {lost} lost; per vCPU {:?}; guest run {:.1} s wall (symbols {:.1} s)",
        summary.total,
        summary.per_cpu,
        r.wall.as_secs_f64(),
        r.prep.as_secs_f64()
    );
    for (class, n) in &summary.per_class {
        eprintln!("hvtrace: record:   {class}: {n}");
    }
    engine::buffers::print_discards(&report["ctf"]["discards"], &r.out.join("plugin.json"));
    engine::summary::print_relayd(&report["ctf"]["relayd"]);
    // [deferred, read later, still unreadable] per vCPU (introspect::defer)
    let late = report["cpus"].as_array().map_or([0u64; 3], |c| {
        c.iter().fold([0; 3], |mut acc, cpu| {
            for (i, a) in acc.iter_mut().enumerate() {
                *a += cpu["strings_late"][i].as_u64().unwrap_or(0);
            }
            acc
        })
    });
    if late[0] > 0 {
        eprintln!(
            "hvtrace: record: {} syscall string arguments were not mapped at entry: {} read later in the syscall, {} left marked (unreadable)",
            late[0], late[1], late[2]
        );
    }
    if summary.total > 0 {
        eprintln!(
            "hvtrace: record: tracer time {:.1} ms in trap callbacks, {:.2} us per event",
            busy as f64 / 1e6,
            busy as f64 / 1e3 / summary.total as f64
        );
    }
    if let Some((base, base_end)) = r.baseline {
        eprintln!(
            "hvtrace: record: baseline (untraced) run {:.1} s wall ({base_end:?}); traced/untraced = {:.2}x (whole guest run, boot included)",
            base.as_secs_f64(),
            r.wall.as_secs_f64() / base.as_secs_f64().max(1e-9)
        );
    }
    match report["slide"].as_i64() {
        // No report at all: said by trace_stop.
        _ if report.is_null() => {}
        Some(s) if s >= 0 => eprintln!("hvtrace: record: KASLR slide {s:#x}; trace in {}", r.out.join("kernel").display()),
        _ => eprintln!("hvtrace: record: the plugin did not find the running kernel (no KASLR slide matched); the trace is empty"),
    }
    if !r.normal_end {
        eprintln!(
            "hvtrace: record: the run ended early ({:?}); the trace in {} holds everything up to that point",
            r.end,
            r.out.display()
        );
    }
    trace_stop(r, &report)
}

/// Why the trace stopped before the run did: the writer's error (it names
/// the stream, the bytes written and the packets not written), or a
/// report the plugin never wrote (QEMU killed before its exit path).
fn trace_stop(r: &QemuRun, report: &serde_json::Value) -> Option<String> {
    if let Some(e) = report["ctf"]["error"].as_str() {
        eprintln!("hvtrace: record: the trace stopped early: {e}");
        return Some(e.to_string());
    }
    if report.is_null() && r.out_abs.join("plugin-started").exists() {
        let why = "the plugin did not finish the trace (QEMU ended without its exit path); \
                   the streams hold the packets written until then";
        eprintln!("hvtrace: record: {why}");
        return Some(why.to_string());
    }
    None
}

/// What the trace holds, as the plugin counted it.
#[derive(Debug, Default)]
pub struct Summary {
    pub total: u64,
    pub per_cpu: Vec<u64>,
    pub per_class: BTreeMap<&'static str, u64>,
}

/// What the plugin wrote, from its report (`plugin.json`).
fn summarize(report: &serde_json::Value) -> Summary {
    let mut s = Summary::default();
    for cpu in report["cpus"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let n = cpu["events"].as_u64().unwrap_or(0);
        s.per_cpu.push(n);
        s.total += n;
        for (tag, v) in cpu["by_event"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            let v = v.as_u64().unwrap_or(0);
            if v > 0 {
                *s.per_class
                    .entry(engine::summary::class_of_tag(tag))
                    .or_default() += v;
            }
        }
    }
    s
}
