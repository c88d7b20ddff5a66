//! The LTTng project's own analyses (`lttnganalyses` from PyPI, on the
//! babeltrace 1.x Python bindings) run unchanged on real hvtrace traces of
//! both kernel lines, and their figures agree with what the guest counted
//! itself: `lttng-syscallstats` with `/bin/syscalls`'s COUNTS,
//! `lttng-irqstats` with the growth of `/proc/interrupts`, `lttng-cputop`
//! with `hvtrace report`'s per-task time, `lttng-schedstats` with the
//! trace's own wake-ups, `lttng-iolatencystats`/`lttng-iousagetop` with the
//! workload's reads. The analyses that need event classes hvtrace does not
//! trace (block, network, page allocation) must still run.
//!
//! The tools are installed by `scripts/install-deps.sh` (a virtualenv in
//! the cache folder); without them the test fails and says so.

mod common;
mod lttng_support;
mod record_support;

use std::collections::BTreeMap;

use lttng_support::{mi_rows, Analyses, TraceClock};
use record_support::{record_on, two_reads, Ev, Recorded};

const ROUNDS: u32 = 200;

/// `/proc/interrupts` before and after `/bin/syscalls`, read by dd in one
/// read(2) each (busybox cat would sendfile).
fn workload() -> String {
    let dd = "dd if=/proc/interrupts bs=65536 count=1 2>/dev/null";
    format!("{dd}; /bin/syscalls {ROUNDS}; sleep 0.05; {dd}")
}

#[test]
fn lttng_analyses_6_1() {
    analyses_match_the_guest("qemu", "6.1");
}

#[test]
fn lttng_analyses_6_12() {
    analyses_match_the_guest("qemu", "6.12");
}

/// The KVM monitor's trace (every class, software traps), here with
/// hardware virtualization, else in the stock-KVM harness's L1.
#[test]
fn lttng_analyses_kvm_6_1() {
    if common::hvtrace_on_kvm().is_none() {
        return;
    }
    let _machine = common::machine_lock(false);
    analyses_match_the_guest("kvm", "6.1");
}

fn analyses_match_the_guest(backend: &str, line: &str) {
    let tools = Analyses::installed();
    let script = workload();
    let r = record_on(backend, line, 1, "lttng", &[], &["/bin/sh", "-c", &script]);
    assert_eq!(r.status, 0, "{}", r.console);
    let clock = TraceClock::of(&r.dir.join("kernel"));
    let started = std::time::Instant::now();
    syscallstats_match_counts(&tools, &r, &clock);
    irqstats_match_proc_interrupts(&tools, &r, &clock);
    cputop_matches_report(&tools, &r);
    schedstats_match_wakeups(&tools, &r);
    io_analyses_match_reads(&tools, &r, &clock);
    the_other_analyses_run(&tools, &r);
    println!(
        "lttng-analyses on {line} ({backend}): every check passed ({:.1} s of analyses)",
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&r.dir);
}

/// The workload's process and the span of its counted syscalls: from its
/// openat of /dev/null (the first one it counts) to its close of it.
fn workload_window(r: &Recorded) -> (i64, usize, usize) {
    let tid = r
        .events
        .iter()
        .find(|e| e.name == "sched_process_exec" && e.text("filename") == "/bin/syscalls")
        .map(|e| e.tid)
        .expect("exec of /bin/syscalls traced");
    let at = |from: usize, f: &dyn Fn(&Ev) -> bool| {
        r.events[from..]
            .iter()
            .position(|e| e.tid == tid && f(e))
            .map(|p| p + from)
    };
    let open = at(0, &|e| {
        e.name == "syscall_entry_openat" && e.text("filename") == "/dev/null"
    })
    .expect("openat(/dev/null)");
    let opened = at(open, &|e| e.name == "syscall_exit_openat").expect("its exit");
    let fd = r.events[opened].int("ret");
    let close = r
        .events
        .iter()
        .rposition(|e| e.tid == tid && e.name == "syscall_entry_close" && e.int("fd") == fd)
        .expect("close of /dev/null");
    let closed = at(close, &|e| e.name == "syscall_exit_close").expect("its exit");
    (tid, open, closed)
}

/// Per syscall, what lttng-syscallstats counts for the workload between
/// its first and last counted syscall equals the workload's own COUNTS;
/// over the whole trace, it equals the trace's syscall exits of that
/// process (lttng-analyses counts a syscall at its exit).
fn syscallstats_match_counts(tools: &Analyses, r: &Recorded, clock: &TraceClock) {
    let counts = r.counts();
    let (tid, first, last) = workload_window(r);
    let range = clock.range(r.events[first].ts, r.events[last].ts);
    let tid_arg = tid.to_string();
    let mi = tools.run(
        "syscallstats",
        &["--tid", &tid_arg, "--gmt", "--timerange", &range],
        &r.dir,
    );
    let got = per_tid_counts(&mi, tid);
    let expected: BTreeMap<String, i64> = counts
        .iter()
        .filter(|(k, _)| !["rounds", "elapsed_ns"].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.parse().unwrap()))
        .collect();
    assert_eq!(
        got, expected,
        "lttng-syscallstats in the workload's span vs its COUNTS"
    );
    assert_eq!(expected["getpid"], i64::from(ROUNDS));

    let whole = tools.run("syscallstats", &["--tid", &tid_arg], &r.dir);
    let mut exits: BTreeMap<String, i64> = BTreeMap::new();
    for e in r.events.iter().filter(|e| e.tid == tid) {
        if let Some(name) = e.name.strip_prefix("syscall_exit_") {
            *exits.entry(name.to_string()).or_default() += 1;
        }
    }
    assert_eq!(
        per_tid_counts(&whole, tid),
        exits,
        "lttng-syscallstats vs the trace's exits of {tid}"
    );
    output_arguments_at_the_exits(r, tid, first, last);
    println!("lttng-syscallstats: {expected:?} for tid {tid}, as COUNTS");
}

/// The workload's syscalls carry their output arguments at the exit, as
/// lttng-modules records them, and not at the entry: `read`'s `buf` (one
/// stack buffer, the same every round), `clock_gettime`'s `tp`, and
/// `nanosleep`'s `rmtp`, which the workload passes as NULL.
fn output_arguments_at_the_exits(r: &Recorded, tid: i64, first: usize, last: usize) {
    let mine: Vec<&Ev> = r.events[first..=last]
        .iter()
        .filter(|e| e.tid == tid)
        .collect();
    let exits = |name: &str, field: &str| -> Vec<i64> {
        mine.iter()
            .filter(|e| e.name == format!("syscall_exit_{name}"))
            .map(|e| e.int(field))
            .collect()
    };
    let bufs = exits("read", "buf");
    assert_eq!(bufs.len(), ROUNDS as usize);
    assert!(
        bufs[0] != 0 && bufs.iter().all(|&b| b == bufs[0]),
        "read's buf at the exits: {bufs:?}"
    );
    assert!(exits("clock_gettime", "tp").iter().all(|&p| p != 0));
    assert!(exits("nanosleep", "rmtp").iter().all(|&p| p == 0));
    for e in mine.iter().filter(|e| e.name == "syscall_entry_read") {
        assert!(
            !e.fields.contains_key("buf"),
            "an output at the entry: {e:?}"
        );
        assert!(
            e.fields.contains_key("fd") && e.fields.contains_key("count"),
            "{e:?}"
        );
    }
}

/// The per-syscall counts of the table lttng-syscallstats prints for `tid`.
fn per_tid_counts(mi: &serde_json::Value, tid: i64) -> BTreeMap<String, i64> {
    let key = format!("TID: {tid})");
    let rows = mi_rows(mi, |c| {
        c["inherit"] == "per-tid" && c["title"].as_str().is_some_and(|t| t.contains(&key))
    });
    rows.iter()
        .map(|row| {
            (
                row[0]["name"].as_str().expect("syscall name").to_string(),
                row[1]["value"].as_i64().expect("count"),
            )
        })
        .collect()
}

/// Per device irq: lttng-irqstats between the two reads of
/// /proc/interrupts counts what the trace holds there, and the counters'
/// growth lies between that count and the one including the two reads
/// (each snapshot is taken somewhere inside its read). Over the whole
/// trace it counts every `irq_handler_entry`.
fn irqstats_match_proc_interrupts(tools: &Analyses, r: &Recorded, clock: &TraceClock) {
    let snaps = proc_interrupts_snapshots(&r.console);
    let readers: Vec<i64> = r
        .events
        .iter()
        .filter(|e| e.name == "syscall_entry_openat" && e.text("filename") == "/proc/interrupts")
        .map(|e| e.tid)
        .collect();
    assert_eq!(readers.len(), 2, "two opens of /proc/interrupts");
    let [in1, out1, in2, out2] = two_reads(&r.events, readers[0], readers[1]);
    let irqstats = |from: usize, to: usize| {
        let range = clock.range(r.events[from].ts, r.events[to].ts);
        hard_irq_counts(&tools.run("irqstats", &["--gmt", "--timerange", &range], &r.dir))
    };
    // lttng-irqstats counts a handler at its exit, after its entry on the
    // same CPU: an entry whose exit falls outside the events (the trace
    // ended inside the handler) is not counted.
    let traced = |evs: &[Ev]| {
        let mut m: BTreeMap<i64, i64> = BTreeMap::new();
        let mut open: BTreeMap<i64, i64> = BTreeMap::new();
        for e in evs {
            match e.name.as_str() {
                "irq_handler_entry" => {
                    open.insert(e.cpu, e.int("irq"));
                }
                "irq_handler_exit" if open.remove(&e.cpu) == Some(e.int("irq")) => {
                    *m.entry(e.int("irq")).or_default() += 1;
                }
                _ => {}
            }
        }
        m
    };
    let inner = irqstats(out1, in2);
    let outer = irqstats(in1, out2);
    assert_eq!(
        inner,
        traced(&r.events[out1..=in2]),
        "irqstats between the reads vs the trace"
    );
    assert_eq!(
        outer,
        traced(&r.events[in1..=out2]),
        "irqstats including the reads vs the trace"
    );
    let mut grew_total = 0;
    for (irq, after) in &snaps[1] {
        if *irq < 0 {
            continue; // LOC: the local timer is not an irq_handler_entry
        }
        let grew = after - snaps[0].get(irq).copied().unwrap_or(0);
        let get = |m: &BTreeMap<i64, i64>| m.get(irq).copied().unwrap_or(0);
        assert!(
            get(&inner) <= grew && grew <= get(&outer),
            "irq {irq}: /proc/interrupts grew {grew}; lttng-irqstats {} between the reads, {} including them",
            get(&inner),
            get(&outer)
        );
        grew_total += grew;
    }
    assert!(
        grew_total > 0,
        "the workload's console output raised interrupts"
    );
    let whole = hard_irq_counts(&tools.run("irqstats", &[], &r.dir));
    assert_eq!(
        whole,
        traced(&r.events),
        "lttng-irqstats vs every complete irq handler"
    );
    println!(
        "lttng-irqstats: {inner:?} between the reads, /proc/interrupts {:?} -> {:?}",
        snaps[0], snaps[1]
    );
}

/// The two `/proc/interrupts` listings of the console, irq -> sum over
/// CPUs (LOC as -1).
fn proc_interrupts_snapshots(console: &str) -> Vec<BTreeMap<i64, i64>> {
    let mut snaps: Vec<BTreeMap<i64, i64>> = Vec::new();
    for l in console.lines().map(str::trim) {
        if l.starts_with("CPU0") {
            snaps.push(BTreeMap::new());
            continue;
        }
        let Some((irq, rest)) = l.split_once(':') else {
            continue;
        };
        let irq = if irq.trim() == "LOC" { "-1" } else { irq };
        let (Ok(irq), Some(s)) = (irq.trim().parse::<i64>(), snaps.last_mut()) else {
            continue;
        };
        let n = rest
            .split_whitespace()
            .map_while(|w| w.parse::<i64>().ok())
            .sum();
        s.insert(irq, n);
    }
    assert_eq!(snaps.len(), 2, "two /proc/interrupts listings:\n{console}");
    snaps
}

/// irq -> count of lttng-irqstats' hard irq table.
fn hard_irq_counts(mi: &serde_json::Value) -> BTreeMap<i64, i64> {
    mi_rows(mi, |c| c == "hard-stats")
        .iter()
        .map(|row| {
            (
                row[0]["nr"].as_i64().expect("irq number"),
                row[1]["value"].as_i64().expect("count"),
            )
        })
        .collect()
}

/// Per task, lttng-cputop's CPU time is `hvtrace report`'s (user time plus
/// time in syscalls): to 1 us (the ratio's rounding) for a task alive at
/// the end; for one that exited, the report stops at its
/// sched_process_exit while cputop runs to its last switch out, so cputop
/// may be ahead by at most that tail. The idle task is left out: the
/// report does not count idle time as a task's.
fn cputop_matches_report(tools: &Analyses, r: &Recorded) {
    let out = common::hvtrace()
        .arg("report")
        .arg(&r.dir)
        .arg("--json")
        .output()
        .expect("run hvtrace report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    let duration = report["duration_ns"].as_f64().expect("duration_ns");
    // The report gives a task one row per program it ran (split at exec);
    // lttng-cputop gives one per tid, so the rows of a tid are summed.
    let mut on_cpu: BTreeMap<i64, f64> = BTreeMap::new();
    for t in report["tasks"].as_array().expect("tasks") {
        let syscalls: f64 = t["syscall_ns"]
            .as_object()
            .expect("syscall_ns")
            .values()
            .filter_map(serde_json::Value::as_f64)
            .sum();
        *on_cpu.entry(t["tid"].as_i64().unwrap()).or_default() +=
            t["user_ns"].as_f64().unwrap() + syscalls;
    }
    let mut exited = BTreeMap::new();
    let mut last_out = BTreeMap::new();
    for e in &r.events {
        match e.name.as_str() {
            "sched_process_exit" => {
                exited.insert(e.int("tid"), e.ts);
            }
            "sched_switch" => {
                last_out.insert(e.int("prev_tid"), e.ts);
            }
            _ => {}
        }
    }
    let mi = tools.run("cputop", &["--limit", "100000"], &r.dir);
    let rows = mi_rows(&mi, |c| c == "per-process");
    let (tid, _, _) = workload_window(r);
    let mut compared = 0;
    for row in &rows {
        let t = row[0]["tid"].as_i64().expect("tid");
        if t == 0 {
            continue;
        }
        let cputop_ns = row[3]["value"].as_f64().expect("usage ratio") * duration;
        let report_ns = *on_cpu
            .get(&t)
            .unwrap_or_else(|| panic!("cputop's tid {t} is not in the report"));
        let tail = exited
            .get(&t)
            .map_or(0.0, |&x| last_out.get(&t).map_or(0.0, |&o| (o - x) as f64));
        let d = cputop_ns - report_ns;
        assert!(
            (-1e3..=tail + 1e3).contains(&d),
            "tid {t}: lttng-cputop {cputop_ns:.0} ns, hvtrace report {report_ns:.0} ns (exit tail {tail} ns)"
        );
        compared += 1;
    }
    assert!(
        rows.iter().any(|row| row[0]["tid"] == tid),
        "cputop lists the workload"
    );
    assert!(compared >= 5, "cputop lists the guest's tasks: {compared}");
    println!("lttng-cputop: {compared} tasks agree with hvtrace report");
}

/// lttng-schedstats' wake-up latencies of the workload: one per switch-in
/// that follows a wake-up (`sched_waking`/`sched_wakeup` of a task not
/// running), counted here from the trace.
fn schedstats_match_wakeups(tools: &Analyses, r: &Recorded) {
    let (tid, _, _) = workload_window(r);
    let (mut running, mut woken, mut latencies) = (false, false, 0);
    for e in &r.events {
        match e.name.as_str() {
            "sched_switch" => {
                if e.int("prev_tid") == tid {
                    running = false;
                    woken = false;
                }
                if e.int("next_tid") == tid {
                    latencies += i64::from(woken);
                    woken = false;
                    running = true;
                }
            }
            "sched_waking" | "sched_wakeup" | "sched_wakeup_new" if e.int("tid") == tid => {
                woken |= !running;
            }
            _ => {}
        }
    }
    let tid_arg = tid.to_string();
    let mi = tools.run("schedstats", &["--tid", &tid_arg], &r.dir);
    let rows = mi_rows(&mi, |c| c == "per_tid_stats");
    let row = rows
        .iter()
        .find(|row| row[0]["tid"] == tid)
        .expect("schedstats has the workload");
    assert_eq!(
        row[1]["value"].as_i64(),
        Some(latencies),
        "wake-up latencies of {tid}"
    );
    // nanosleep(0) blocks now and then (how often depends on the engine's
    // speed): the comparison is not an empty one.
    assert!(latencies > 0, "the workload was woken at least once");
    println!("lttng-schedstats: {latencies} wake-up latencies of tid {tid}, as the trace");
}

/// lttng-iolatencystats counts the workload's reads, opens and writes in
/// its span as COUNTS does, and lttng-iousagetop sums the bytes its reads
/// of the probe file returned.
fn io_analyses_match_reads(tools: &Analyses, r: &Recorded, clock: &TraceClock) {
    let counts = r.counts();
    let (tid, first, last) = workload_window(r);
    let range = clock.range(r.events[first].ts, r.events[last].ts);
    let mi = tools.run("iolatencystats", &["--gmt", "--timerange", &range], &r.dir);
    let by_kind: BTreeMap<String, i64> = mi_rows(&mi, |c| c == "syscall-latency-stats")
        .iter()
        .map(|row| {
            (
                row[0]["value"].as_str().unwrap().to_string(),
                row[1]["value"].as_i64().unwrap(),
            )
        })
        .collect();
    let c = |k: &str| counts[k].parse::<i64>().unwrap();
    assert_eq!(by_kind.get("Read"), Some(&c("read")), "{by_kind:?}");
    assert_eq!(by_kind.get("Write"), Some(&c("write")), "{by_kind:?}");
    assert_eq!(by_kind.get("Open"), Some(&c("openat")), "{by_kind:?}");
    let bytes: i64 = r.events[first..=last]
        .iter()
        .filter(|e| e.tid == tid && e.name == "syscall_exit_read")
        .map(|e| e.int("ret"))
        .sum();
    let mi = tools.run("iousagetop", &[], &r.dir);
    let files = mi_rows(&mi, |c| {
        c["title"].as_str() == Some("Per-file top I/O operations [read]")
    });
    let probe = files
        .iter()
        .find(|row| row[0]["path"] == "/etc/hvtrace-probe")
        .expect("iousagetop names the probe file");
    assert_eq!(
        probe[1]["value"].as_i64(),
        Some(bytes),
        "bytes read from /etc/hvtrace-probe"
    );
    println!(
        "lttng-iolatencystats/iousagetop: {by_kind:?}, {bytes} B read from /etc/hvtrace-probe"
    );
}

/// Every other analysis runs to its end and prints its MI document;
/// those whose events hvtrace does not write report nothing.
fn the_other_analyses_run(tools: &Analyses, r: &Recorded) {
    for tool in [
        "schedtop",
        "schedlog",
        "schedfreq",
        "irqlog",
        "irqfreq",
        "iolatencytop",
        "iolatencyfreq",
        "iolog",
        "periodstats",
        "periodlog",
        "periodtop",
        "periodfreq",
    ] {
        let mi = tools.run(tool, &[], &r.dir);
        assert!(mi["results"].is_array(), "{tool}: {mi}");
    }
    let log = mi_rows(&tools.run("irqlog", &[], &r.dir), |c| c == "log");
    assert_eq!(
        log.len(),
        r.events
            .iter()
            .filter(|e| e.name == "irq_handler_exit")
            .count(),
        "one irqlog line per handled irq"
    );
    // No mm_page_alloc/mm_page_free: nothing allocated or freed.
    let mem = mi_rows(&tools.run("memtop", &[], &r.dir), |c| c == "total");
    assert_eq!(mem[0][0]["value"], 0);
    assert_eq!(mem[0][1]["value"], 0);
}
