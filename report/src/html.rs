//! `hvtrace report --html`: one self-contained page (no network) with a
//! zoomable timeline (a lane per vCPU showing which task runs, syscalls as
//! spans under it, interrupts as marks), a legend, and the report's tables.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use crate::analysis::{irqs_by_number, LatencyStats};
use crate::duration::dur;
use crate::model::{Ev, Kind};
use crate::summary::Report;
use crate::trace::Trace;

/// Past this many spans the shortest syscalls are left out (the page says so).
const MAX_SYSCALL_SPANS: usize = 40_000;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// JSON text safe inside a <script> element.
fn script_json(v: &serde_json::Value) -> String {
    v.to_string().replace("</", "<\\/")
}

struct Timeline {
    /// Per cpu: [start, end, tid] of each running slice (idle left out).
    runs: BTreeMap<u32, Vec<[u64; 3]>>,
    /// [cpu, start, end, tid, name index].
    syscalls: Vec<(u32, u64, u64, i32, usize)>,
    syscall_names: Vec<String>,
    /// [cpu, ts, label].
    irqs: Vec<(u32, u64, String)>,
    /// [cpu, ts, label] of fork/exec/exit.
    procs: Vec<(u32, u64, String)>,
    comms: HashMap<i32, (i32, String)>,
    dropped_syscalls: usize,
}

fn timeline(events: &[Ev], end_ts: u64) -> Timeline {
    let mut runs: BTreeMap<u32, Vec<[u64; 3]>> = BTreeMap::new();
    let mut current: HashMap<u32, (i32, u64)> = HashMap::new();
    let mut open_sys: HashMap<i32, (u32, u64, String)> = HashMap::new();
    let mut syscalls = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut name_ix: HashMap<String, usize> = HashMap::new();
    let mut irqs = Vec::new();
    let mut procs = Vec::new();
    let mut comms: HashMap<i32, (i32, String)> = HashMap::new();
    for e in events {
        if e.tid > 0 && !e.comm.is_empty() {
            comms.insert(e.tid, (e.pid, e.comm.clone()));
        }
        match &e.kind {
            Kind::Switch {
                next_tid,
                next_comm,
                ..
            } => {
                if let Some((tid, since)) = current.insert(e.cpu, (*next_tid, e.ts)) {
                    if tid > 0 {
                        runs.entry(e.cpu)
                            .or_default()
                            .push([since, e.ts, tid as u64]);
                    }
                }
                if *next_tid > 0 {
                    comms
                        .entry(*next_tid)
                        .or_insert((*next_tid, next_comm.clone()));
                }
            }
            Kind::SysEntry { name, .. } => {
                open_sys.insert(e.tid, (e.cpu, e.ts, name.clone()));
            }
            Kind::SysExit { name, .. } => {
                if let Some((cpu, start, n)) = open_sys.remove(&e.tid) {
                    if &n == name {
                        let ix = *name_ix.entry(n.clone()).or_insert_with(|| {
                            names.push(n);
                            names.len() - 1
                        });
                        syscalls.push((cpu, start, e.ts, e.tid, ix));
                    }
                }
            }
            Kind::IrqEntry { irq, name } => irqs.push((e.cpu, e.ts, format!("irq {irq} {name}"))),
            Kind::Fork {
                child_tid,
                child_comm,
                ..
            } => procs.push((
                e.cpu,
                e.ts,
                format!("fork {} → {child_tid} ({child_comm})", e.tid),
            )),
            Kind::Exec { tid, filename } => {
                procs.push((e.cpu, e.ts, format!("exec {tid} {filename}")))
            }
            Kind::Exit { tid } => procs.push((e.cpu, e.ts, format!("exit {tid}"))),
            _ => {}
        }
    }
    for (cpu, (tid, since)) in current {
        if tid > 0 {
            runs.entry(cpu)
                .or_default()
                .push([since, end_ts, tid as u64]);
        }
    }
    let mut dropped_syscalls = 0;
    if syscalls.len() > MAX_SYSCALL_SPANS {
        syscalls.sort_by_key(|s| std::cmp::Reverse(s.2 - s.1));
        dropped_syscalls = syscalls.len() - MAX_SYSCALL_SPANS;
        syscalls.truncate(MAX_SYSCALL_SPANS);
    }
    Timeline {
        runs,
        syscalls,
        syscall_names: names,
        irqs,
        procs,
        comms,
        dropped_syscalls,
    }
}

pub fn render(trace: &Trace, events: &[Ev], report: &Report) -> String {
    let a = &report.analysis;
    let t0 = a.start_ts;
    let tl = timeline(events, a.end_ts);
    let rel = |ts: u64| ts.saturating_sub(t0);
    let data = serde_json::json!({
        "duration": a.end_ts.saturating_sub(t0),
        "cpus": tl.runs.keys().copied().chain(events.iter().map(|e| e.cpu)).max().map_or(1, |m| m + 1),
        "runs": tl.runs.iter().map(|(cpu, v)| (cpu.to_string(), v.iter().map(|r| [rel(r[0]), rel(r[1]), r[2]]).collect::<Vec<_>>())).collect::<BTreeMap<_, _>>(),
        "syscalls": tl.syscalls.iter().map(|s| serde_json::json!([s.0, rel(s.1), rel(s.2), s.3, s.4])).collect::<Vec<_>>(),
        "syscallNames": tl.syscall_names,
        "irqs": tl.irqs.iter().map(|i| serde_json::json!([i.0, rel(i.1), i.2])).collect::<Vec<_>>(),
        "procs": tl.procs.iter().map(|i| serde_json::json!([i.0, rel(i.1), i.2])).collect::<Vec<_>>(),
        "tasks": tl.comms.iter().map(|(tid, (pid, comm))| (tid.to_string(), serde_json::json!([pid, comm]))).collect::<BTreeMap<_, _>>(),
    });

    let mut tables = String::new();
    let _ = write!(tables, "<h2>Where each task's time went</h2><table id=\"tasks\"><tr><th>pid</th><th>tid</th><th>comm</th><th>user</th><th>kernel</th><th>wait cpu</th><th>blocked</th><th>switches</th></tr>");
    for t in a.tasks.iter().filter(|t| t.tid > 0 && t.switches_out > 0) {
        let _ = write!(
            tables,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            t.pid,
            t.tid,
            esc(&t.comm),
            dur(t.user_ns),
            dur(t.kernel_ns()),
            dur(t.wait_cpu_ns),
            dur(t.blocked_total_ns()),
            t.switches_out
        );
    }
    tables.push_str("</table>");
    if !report.locks.cycles.is_empty() {
        tables.push_str("<h2>Deadlocks</h2><ul id=\"deadlocks\">");
        for w in &report.locks.waits {
            let _ = write!(
                tables,
                "<li>tid {} ({}) waits in {} for {}, held by {}</li>",
                w.tid,
                esc(&w.comm),
                esc(&w.call),
                esc(&w.file),
                w.holder_tid.map_or("?".into(), |h| h.to_string())
            );
        }
        tables.push_str("</ul>");
    }
    let mut stats = |title: &str, id: &str, rows: Vec<(String, &LatencyStats)>| {
        let _ = write!(tables, "<h2>{title}</h2><table id=\"{id}\"><tr><th>name</th><th>count</th><th>total</th><th>p50</th><th>p99</th><th>max</th></tr>");
        for (n, s) in rows {
            let _ = write!(
                tables,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&n),
                s.count,
                dur(s.total_ns),
                dur(s.p50_ns),
                dur(s.p99_ns),
                dur(s.max_ns)
            );
        }
        tables.push_str("</table>");
    };
    let mut sys: Vec<_> = a.syscalls.iter().map(|(k, v)| (k.clone(), v)).collect();
    sys.sort_by_key(|s| std::cmp::Reverse(s.1.total_ns));
    stats("Syscalls", "syscalls", sys);
    stats(
        "Interrupt handlers",
        "irqs",
        irqs_by_number(a)
            .into_iter()
            .map(|(k, v)| (k.clone(), v))
            .collect(),
    );

    let note = if tl.dropped_syscalls > 0 {
        format!("<p class=\"note\">{} shortest syscall spans are not drawn (limit {MAX_SYSCALL_SPANS}).</p>", tl.dropped_syscalls)
    } else {
        String::new()
    };
    let title = format!(
        "hvtrace — {} ({}), {} events over {}",
        esc(&trace.hostname),
        esc(&trace.kernel_release),
        report.events,
        dur(report.duration_ns)
    );
    PAGE.replace("{{TITLE}}", &title)
        .replace("{{NOTE}}", &note)
        .replace("{{TABLES}}", &tables)
        .replace("{{DATA}}", &script_json(&data))
}

const PAGE: &str = include_str!("page.html");
