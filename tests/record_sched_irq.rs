//! End-to-end tests of `hvtrace record` (QEMU TCG engine, real kernels):
//! context switches against the kernel's own rusage counters, interrupts
//! against /proc/interrupts, and sample mode.

mod common;
mod record_support;

use std::collections::{BTreeMap, BTreeSet};

use record_support::{babeltrace, record, Ev};

/// `/bin/pingpong 500` under busybox `time -v` (which reports the wait4
/// rusage of the pair: voluntary + involuntary context switches): the
/// traced switches away from the two processes equal that count, and every
/// switch names real tasks of the guest.
#[test]
fn record_pingpong_6_1() {
    pingpong_switches_match_rusage("6.1", 1);
}

#[test]
fn record_pingpong_6_12_two_vcpus() {
    pingpong_switches_match_rusage("6.12", 2);
}

fn pingpong_switches_match_rusage(line: &str, vcpus: u32) {
    let r = record(
        line,
        vcpus,
        "pingpong",
        &["/bin/busybox", "time", "-v", "/bin/pingpong", "500"],
    );
    assert_eq!(r.status, 0, "{}", r.console);
    let counts = r.counts();
    let parent: i64 = counts["parent"].parse().unwrap();
    let child: i64 = counts["child"].parse().unwrap();
    let rusage = |what: &str| -> i64 {
        r.console
            .lines()
            .find_map(|l| l.trim().strip_prefix(what))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{what}` in the console:\n{}", r.console))
    };
    let expected = rusage("Voluntary context switches:") + rusage("Involuntary context switches:");
    let switches: Vec<&Ev> = r
        .events
        .iter()
        .filter(|e| e.name == "sched_switch")
        .collect();
    let traced = switches
        .iter()
        .filter(|e| [parent, child].contains(&e.int("prev_tid")))
        .count() as i64;
    assert!(
        expected >= 500,
        "500 round trips block at least once each: {expected}"
    );
    assert_eq!(
        traced, expected,
        "sched_switch from {parent}/{child} vs rusage"
    );
    // every task named by a switch is one the trace knows: dumped, forked,
    // or an idle task (tid 0)
    let mut known: BTreeSet<i64> = r
        .events
        .iter()
        .filter(|e| e.name == "lttng_statedump_process_state")
        .map(|e| e.int("tid"))
        .collect();
    known.extend(
        r.events
            .iter()
            .filter(|e| e.name == "sched_process_fork")
            .map(|e| e.int("child_tid")),
    );
    let first_dump = r
        .events
        .iter()
        .position(|e| e.name == "lttng_statedump_process_state")
        .expect("statedump");
    for e in &switches {
        if e.int("prev_tid") == parent || e.int("prev_tid") == child {
            assert!(["pingpong", "time", "busybox", "init"].contains(&e.text("prev_comm").as_str()));
        }
    }
    for e in r.events[first_dump..]
        .iter()
        .filter(|e| e.name == "sched_switch")
    {
        for k in ["prev_tid", "next_tid"] {
            let t = e.int(k);
            assert!(t == 0 || known.contains(&t), "{k} {t} unknown: {e:?}");
        }
    }
    let pairs = wakeups_pair_with_wakings(&r.events, vcpus);
    assert!(
        pairs >= 500,
        "500 round trips wake a blocked side each time: {pairs}"
    );
}

/// sched_waking and sched_wakeup come in the kernel's order: each wakeup
/// follows a waking of the same task not yet matched, no task is switched
/// in while its waking is unmatched (try_to_wake_up makes it runnable
/// first), and at the end at most one waking per vCPU is still in flight.
/// Returns the number of pairs.
fn wakeups_pair_with_wakings(events: &[Ev], vcpus: u32) -> usize {
    let mut pending: BTreeMap<i64, u32> = BTreeMap::new();
    let mut pairs = 0;
    for (i, e) in events.iter().enumerate() {
        match e.name.as_str() {
            "sched_waking" => *pending.entry(e.int("tid")).or_default() += 1,
            "sched_wakeup" => {
                let n = pending.entry(e.int("tid")).or_default();
                assert!(
                    *n > 0,
                    "event {i}: sched_wakeup without its sched_waking: {e:?}"
                );
                *n -= 1;
                pairs += 1;
            }
            "sched_switch" => {
                let t = e.int("next_tid");
                let n = pending.get(&t).copied().unwrap_or(0);
                assert!(
                    n == 0,
                    "event {i}: {t} switched in before its sched_wakeup: {e:?}"
                );
            }
            _ => {}
        }
    }
    let in_flight: u32 = pending.values().sum();
    assert!(
        in_flight <= vcpus,
        "{in_flight} sched_waking without sched_wakeup at the end"
    );
    pairs
}

/// Interrupts: per device irq, the traced `irq_handler_entry` events (and
/// for the local timer, LOC, `x86_irq_vectors_local_timer_entry`) between
/// two reads of /proc/interrupts equal the growth of its counters.
#[test]
fn record_irqs_6_1() {
    irqs_match_proc_interrupts("6.1", 1);
}

#[test]
fn record_irqs_6_12() {
    irqs_match_proc_interrupts("6.12", 1);
}

#[test]
fn record_irqs_6_12_two_vcpus() {
    irqs_match_proc_interrupts("6.12", 2);
}

fn irqs_match_proc_interrupts(line: &str, vcpus: u32) {
    // dd reads the whole file in one read(), which generates the snapshot
    // (busybox cat would use sendfile, interleaving output and generation).
    let dd = "dd if=/proc/interrupts bs=65536 count=1 2>/dev/null";
    let script = format!("{dd}; i=0; while [ $i -lt 40 ]; do echo tick $i; i=$((i+1)); done; {dd}");
    let r = record(line, vcpus, "irq", &["/bin/sh", "-c", &script]);
    assert_eq!(r.status, 0, "{}", r.console);
    // the two snapshots, from the console
    let mut snaps: Vec<BTreeMap<i64, i64>> = Vec::new();
    for l in r.console.lines() {
        let l = l.trim();
        if l.starts_with("CPU0") {
            snaps.push(BTreeMap::new());
            continue;
        }
        let Some((irq, rest)) = l.split_once(':') else {
            continue;
        };
        // the local APIC timer as irq -1
        let irq = if irq.trim() == "LOC" { "-1" } else { irq };
        let (Ok(irq), Some(s)) = (irq.trim().parse::<i64>(), snaps.last_mut()) else {
            continue;
        };
        let per_cpu: i64 = rest
            .split_whitespace()
            .map_while(|w| w.parse::<i64>().ok())
            .sum();
        s.insert(irq, per_cpu);
    }
    assert_eq!(
        snaps.len(),
        2,
        "two /proc/interrupts listings:\n{}",
        r.console
    );
    // the window: from the first dd's read of /proc/interrupts returning
    // to the second dd's read of it starting
    let cats: Vec<i64> = r
        .events
        .iter()
        .filter(|e| e.name == "syscall_entry_openat" && e.text("filename") == "/proc/interrupts")
        .map(|e| e.tid)
        .collect();
    assert_eq!(cats.len(), 2, "two opens of /proc/interrupts");
    assert_ne!(cats[0], cats[1]);
    // Each snapshot is taken somewhere inside its read(): interrupts during
    // the two reads may fall on either side of it. Outside the reads the
    // count must be exact.
    let pos = |from: usize, tid: i64, name: &str| {
        r.events[from..]
            .iter()
            .position(|e| e.tid == tid && e.name == name)
            .map(|p| p + from)
            .unwrap_or_else(|| panic!("{name} of {tid}"))
    };
    let read1_in = pos(0, cats[0], "syscall_entry_read");
    let read1_out = pos(read1_in, cats[0], "syscall_exit_read");
    let read2_in = pos(read1_out, cats[1], "syscall_entry_read");
    let read2_out = pos(read2_in, cats[1], "syscall_exit_read");
    let count = |evs: &[Ev]| {
        let mut m: BTreeMap<i64, i64> = BTreeMap::new();
        for e in evs {
            if e.name == "irq_handler_entry" {
                *m.entry(e.int("irq")).or_default() += 1;
            }
            if e.name == "x86_irq_vectors_local_timer_entry" {
                *m.entry(-1).or_default() += 1;
            }
        }
        m
    };
    let inner = count(&r.events[read1_out..read2_in]);
    let outer = count(&r.events[read1_in..read2_out]);
    let get = |m: &BTreeMap<i64, i64>, irq: &i64| m.get(irq).copied().unwrap_or(0);
    let mut grew = 0;
    for (irq, after) in &snaps[1] {
        let g = after - snaps[0].get(irq).copied().unwrap_or(0);
        let (lo, hi) = (get(&inner, irq), get(&outer, irq));
        assert!(
            lo <= g && g <= hi,
            "irq {irq}: /proc/interrupts grew {g}; traced {lo} between the reads, {hi} including them"
        );
        grew += g;
    }
    assert!(grew > 0, "the console output raised interrupts");
    let loc = snaps[1][&-1] - snaps[0][&-1];
    assert!(loc > 0, "the local timer ticked in the window");
    for irq in outer.keys() {
        assert!(
            snaps[1].contains_key(irq),
            "traced irq {irq} not in /proc/interrupts"
        );
    }
}

/// `--mode sample`: samples come at no more than the asked rate, name the
/// workload among the tasks they hit, and carry kernel and user addresses.
#[test]
fn record_sample_mode() {
    let image = common::image_dir("6.1");
    let dir = std::env::temp_dir().join(format!("hvtrace-sample-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let t = std::time::Instant::now();
    let out = common::hvtrace()
        .args([
            "record",
            "--backend",
            "qemu",
            "--mode",
            "sample",
            "--freq",
            "500",
        ])
        .arg("--kernel")
        .arg(image.join("vmlinuz"))
        .arg("--initrd")
        .arg(image.join("initrd.img"))
        .arg("-o")
        .arg(&dir)
        .args(["--", "/bin/syscalls", "3000"])
        .output()
        .expect("run hvtrace record");
    let wall = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let evs = babeltrace(&dir.join("kernel"));
    let samples: Vec<&Ev> = evs.iter().filter(|e| e.name == "hvtrace_sample").collect();
    assert!(samples.len() > 100, "{} samples", samples.len());
    assert!(
        samples.len() as f64 <= 500.0 * wall * 1.05,
        "{} samples in {wall:.1} s at 500 Hz",
        samples.len()
    );
    let pid = evs
        .iter()
        .find(|e| e.name == "sched_process_exec" && e.text("filename") == "/bin/syscalls")
        .map(|e| e.int("tid"))
        .expect("exec traced");
    let mine = samples
        .iter()
        .filter(|e| e.tid == pid && e.procname == "syscalls")
        .count();
    assert!(mine > 0, "no sample hit the workload");
    assert!(samples
        .iter()
        .any(|e| e.int("kernel") == 1 && (e.int("ip") as u64) >= 0xffff_8000_0000_0000));
    assert!(samples
        .iter()
        .any(|e| e.int("kernel") == 0 && (e.int("ip") as u64) < 0x8000_0000_0000));
    assert!(
        !evs.iter().any(|e| e.name.starts_with("syscall_")),
        "sample mode does not trap syscalls"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// sched_waking and sched_wakeup: the kernel counts successful wakeups
/// (try_to_wake_up whose state matched, the condition of both tracepoints)
/// in /proc/schedstat's `ttwu_count` when booted with `schedstats=enable`;
/// the traced events of each between two reads equal its growth (up to the
/// wakeups during the two reads themselves).
#[test]
fn record_wakeups_match_schedstat() {
    let dd = "dd if=/proc/schedstat bs=65536 count=1 2>/dev/null";
    let script = format!("{dd}; /bin/pingpong 200; {dd}");
    let r = record_support::record_with(
        "6.1",
        1,
        "wakeups",
        &["--append", "schedstats=enable"],
        &["/bin/sh", "-c", &script],
    );
    assert_eq!(r.status, 0, "{}", r.console);
    let snaps: Vec<i64> = r
        .console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("cpu0 "))
        .map(|rest| rest.split_whitespace().nth(4).unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        snaps.len(),
        2,
        "two /proc/schedstat listings:\n{}",
        r.console
    );
    let growth = snaps[1] - snaps[0];
    let dds: Vec<i64> = r
        .events
        .iter()
        .filter(|e| e.name == "syscall_entry_openat" && e.text("filename") == "/proc/schedstat")
        .map(|e| e.tid)
        .collect();
    assert_eq!(dds.len(), 2);
    let pos = |from: usize, tid: i64, name: &str| {
        r.events[from..]
            .iter()
            .position(|e| e.tid == tid && e.name == name)
            .map(|p| p + from)
            .unwrap_or_else(|| panic!("{name} of {tid}"))
    };
    let in1 = pos(0, dds[0], "syscall_entry_read");
    let out1 = pos(in1, dds[0], "syscall_exit_read");
    let in2 = pos(out1, dds[1], "syscall_entry_read");
    let out2 = pos(in2, dds[1], "syscall_exit_read");
    assert!(
        growth >= 200,
        "200 round trips wake at least one side: {growth}"
    );
    for name in ["sched_waking", "sched_wakeup"] {
        let wakes = |evs: &[Ev]| evs.iter().filter(|e| e.name == name).count() as i64;
        let (lo, hi) = (wakes(&r.events[out1..in2]), wakes(&r.events[in1..out2]));
        eprintln!(
            "ttwu_count grew {growth}; {name} traced: {lo} between the reads, {hi} including them"
        );
        assert!(
            lo <= growth && growth <= hi,
            "ttwu_count grew {growth}; traced {name} {lo} between the reads, {hi} including them"
        );
    }
    wakeups_pair_with_wakings(&r.events, 1);
}
