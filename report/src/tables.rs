//! The report as terminal tables: where each task's time went, what was
//! blocked when the trace ended, lock waits and cycles, syscalls, interrupt
//! handlers, who woke whom.

use std::io::{Result, Write};

use comfy_table::{presets::UTF8_BORDERS_ONLY, Cell, CellAlignment, Table};

use crate::analysis::{irqs_by_number, LatencyStats, TaskTime};
use crate::duration::dur;
use crate::summary::Report;

/// Kernel threads listed without --all, busiest first.
const KTHREADS_SHOWN: usize = 8;

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

fn right(t: &mut Table, from: usize) {
    let n = t.column_iter().count();
    for i in from..n {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
}

pub fn print_tables(r: &Report, all: bool, out: &mut dyn Write) -> Result<()> {
    let a = &r.analysis;
    writeln!(
        out,
        "Trace {} — {} ({}), {} events over {}\n",
        r.trace,
        r.hostname,
        r.kernel_release,
        r.events,
        dur(r.duration_ns)
    )?;

    writeln!(out, "Where each task's time went")?;
    let mut t = table(&[
        "pid",
        "tid",
        "comm",
        "user",
        "kernel",
        "wait cpu",
        "blocked",
        "switches",
        "blocked in",
    ]);
    let active = |t: &&TaskTime| t.tid > 0 && t.switches_out + t.user_ns + t.kernel_ns() > 0;
    let mut kthreads: Vec<_> = a
        .tasks
        .iter()
        .filter(active)
        .filter(|t| t.kernel_thread)
        .collect();
    kthreads.sort_by_key(|t| std::cmp::Reverse(t.kernel_ns()));
    let hidden = if all {
        0
    } else {
        kthreads.len().saturating_sub(KTHREADS_SHOWN)
    };
    kthreads.truncate(kthreads.len() - hidden);
    let users = a.tasks.iter().filter(active).filter(|t| !t.kernel_thread);
    for task in users.chain(kthreads) {
        let mut blocked: Vec<_> = task.blocked_ns.iter().collect();
        blocked.sort_by(|x, y| y.1.cmp(x.1));
        let on = blocked
            .iter()
            .take(2)
            .map(|(k, v)| format!("{k} {}", dur(**v)))
            .collect::<Vec<_>>()
            .join(", ");
        t.add_row(vec![
            Cell::new(task.pid),
            Cell::new(task.tid),
            Cell::new(&task.comm),
            Cell::new(dur(task.user_ns)),
            Cell::new(dur(task.kernel_ns())),
            Cell::new(dur(task.wait_cpu_ns)),
            Cell::new(dur(task.blocked_total_ns())),
            Cell::new(task.switches_out),
            Cell::new(on),
        ]);
    }
    right(&mut t, 3);
    writeln!(out, "{t}")?;
    if hidden > 0 {
        writeln!(
            out,
            "  ({hidden} less busy kernel threads not shown; --all lists them)"
        )?;
    }
    writeln!(out)?;

    let stuck: Vec<_> = a
        .tasks
        .iter()
        .filter(|t| t.blocked_at_end.is_some() && t.tid > 0)
        .collect();
    if !stuck.is_empty() {
        writeln!(out, "Blocked when the trace ended")?;
        for task in stuck {
            let s = task.blocked_at_end.as_ref().expect("filtered");
            let args = s
                .args
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ");
            let since = task.blocked_since.unwrap_or(s.entry_ts);
            writeln!(
                out,
                "  pid {} tid {} ({}) in {}({}) for {}",
                task.pid,
                task.tid,
                task.comm,
                s.name,
                args,
                dur(a.end_ts.saturating_sub(since))
            )?;
        }
        writeln!(out)?;
    }
    if !r.locks.waits.is_empty() {
        writeln!(out, "Lock waits")?;
        for w in &r.locks.waits {
            let holder = match (w.holder_tid, &w.holder_comm) {
                (Some(h), Some(c)) => format!("held by tid {h} ({c})"),
                (Some(h), None) => format!("held by tid {h}"),
                _ => "holder not seen in the trace".into(),
            };
            writeln!(
                out,
                "  tid {} ({}) waits in {} for {}, {}",
                w.tid, w.comm, w.call, w.file, holder
            )?;
        }
        for c in &r.locks.cycles {
            let chain: Vec<String> = c.iter().map(|t| t.to_string()).collect();
            writeln!(
                out,
                "  DEADLOCK: {} -> {} (each waits for a lock the next one holds)",
                chain.join(" -> "),
                c[0]
            )?;
        }
        writeln!(out)?;
    }

    writeln!(out, "Syscalls (entry to exit)")?;
    let mut t = table(&["syscall", "count", "total", "p50", "p99", "max"]);
    let mut sys: Vec<_> = a.syscalls.iter().collect();
    sys.sort_by_key(|s| std::cmp::Reverse(s.1.total_ns));
    for (name, s) in sys {
        t.add_row(stats_row(name, s));
    }
    right(&mut t, 1);
    writeln!(out, "{t}\n")?;

    writeln!(out, "Interrupt handlers")?;
    let mut t = table(&["irq", "count", "total", "p50", "p99", "max"]);
    for (name, s) in irqs_by_number(a) {
        t.add_row(stats_row(name, s));
    }
    for (name, s) in &a.softirqs {
        t.add_row(stats_row(&format!("softirq {name}"), s));
    }
    right(&mut t, 1);
    writeln!(out, "{t}\n")?;

    writeln!(out, "Who woke whom (top 15)")?;
    let mut t = table(&["waker", "wakee", "count"]);
    for w in a.wakeups.iter().take(15) {
        t.add_row(vec![
            format!("{} ({})", w.waker_tid, w.waker_comm),
            format!("{} ({})", w.wakee_tid, w.wakee_comm),
            w.count.to_string(),
        ]);
    }
    right(&mut t, 2);
    writeln!(out, "{t}")?;
    Ok(())
}

fn stats_row(name: &str, s: &LatencyStats) -> Vec<String> {
    vec![
        name.to_string(),
        s.count.to_string(),
        dur(s.total_ns),
        dur(s.p50_ns),
        dur(s.p99_ns),
        dur(s.max_ns),
    ]
}
