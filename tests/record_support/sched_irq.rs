//! The context-switch and interrupt checks of `hvtrace record`'s end-to-end
//! tests, on either engine (`backend` is `--backend`'s value; `opts` are
//! extra options such as an `--events` subset that fits an engine's probe
//! budget): the checks of tests/record_sched_irq.rs, taking the engine as
//! a parameter, so that the TCG and the KVM engine's tests run the same.
//!
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use crate::record_support::{record_on, Ev};

/// `/bin/pingpong 500` under busybox `time -v` (which reports the wait4
/// rusage of the pair: voluntary + involuntary context switches): the
/// traced switches away from the two processes equal that count, and every
/// switch names real tasks of the guest.
pub fn pingpong_switches_match_rusage(backend: &str, opts: &[&str], line: &str, vcpus: u32) {
    let r = record_on(
        backend,
        line,
        vcpus,
        "pingpong",
        opts,
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
    // On SMP wait4 can reap a process before its last switch (the one out
    // of do_task_dead, prev_state TASK_DEAD) has bumped its nvcsw: the
    // parent, woken by exit_notify on another CPU, reads the counters
    // first. So rusage may lack the final switch of each of the two; on one
    // vCPU the order is fixed and the count is exact.
    const TASK_DEAD: i64 = 0x80;
    let final_switches = switches
        .iter()
        .filter(|e| {
            [parent, child].contains(&e.int("prev_tid")) && e.int("prev_state") & TASK_DEAD != 0
        })
        .count() as i64;
    assert_eq!(final_switches, 2, "each of the two exits once");
    if vcpus == 1 {
        assert_eq!(
            traced, expected,
            "sched_switch from {parent}/{child} vs rusage"
        );
    } else {
        assert!(
            traced - final_switches <= expected && expected <= traced,
            "sched_switch from {parent}/{child}: {traced} traced ({final_switches} final) vs rusage {expected}"
        );
    }
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
    pipe_descriptors_are_the_ones_used(&r.events, [parent, child]);
    // With software breakpoints the KVM engine leaves sched_wakeup out (its
    // sites are static branches the guest may patch): it says so.
    if backend != "kvm" {
        let pairs = wakeups_pair_with_wakings(&r.events, vcpus);
        assert!(
            pairs >= 500,
            "500 round trips wake a blocked side each time: {pairs}"
        );
    }
}

/// `syscall_exit_pipe2` records the two descriptors the kernel wrote (as
/// lttng-modules does), not the pointer: the two pipes of the pair are
/// four distinct descriptors, and every pipe read and write of the two
/// processes afterwards uses one of them. (Nothing to check where syscalls
/// are not traced.)
pub fn pipe_descriptors_are_the_ones_used(events: &[Ev], pair: [i64; 2]) {
    let pipes: Vec<(usize, &Ev)> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.name == "syscall_exit_pipe2" && pair.contains(&e.pid))
        .collect();
    if pipes.is_empty() {
        return;
    }
    assert_eq!(pipes.len(), 2, "two pipes: {pipes:?}");
    let mut fds = BTreeSet::new();
    for (_, e) in &pipes {
        assert_eq!(e.int("ret"), 0, "{e:?}");
        let f = e.fields.get("fildes").expect("fildes at the exit");
        for fd in f
            .split(['[', ']', ',', '='])
            .filter_map(|w| w.trim().parse::<i64>().ok())
            .skip(1)
            .step_by(2)
        {
            assert!(fd >= 0 && fds.insert(fd), "descriptors {f}");
        }
    }
    assert_eq!(fds.len(), 4, "{pipes:?}");
    let used: BTreeSet<i64> = events[pipes[1].0..]
        .iter()
        .filter(|e| {
            pair.contains(&e.tid)
                && ["syscall_entry_read", "syscall_entry_write"].contains(&e.name.as_str())
                && e.int("count") == 1
        })
        .map(|e| e.int("fd"))
        .collect();
    assert!(
        !used.is_empty() && used.is_subset(&fds),
        "one-byte reads and writes on {used:?}, pipes {fds:?}"
    );
}

/// sched_waking and sched_wakeup come in the kernel's order: each wakeup
/// follows a waking of the same task not yet matched, no task is switched
/// in while its waking is unmatched (try_to_wake_up makes it runnable
/// first), and at the end at most one waking per vCPU is still in flight.
/// Returns the number of pairs.
pub fn wakeups_pair_with_wakings(events: &[Ev], vcpus: u32) -> usize {
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
pub fn irqs_match_proc_interrupts(backend: &str, opts: &[&str], line: &str, vcpus: u32) {
    // dd reads the whole file in one read(), which generates the snapshot
    // (busybox cat would use sendfile, interleaving output and generation).
    let dd = "dd if=/proc/interrupts bs=65536 count=1 2>/dev/null";
    // The sleep makes sure the local timer fires in the window: a fast
    // guest (the KVM engine) otherwise echoes in a few idle-tickless ms.
    let script = format!(
        "{dd}; i=0; while [ $i -lt 40 ]; do echo tick $i; i=$((i+1)); done; sleep 0.05; {dd}"
    );
    let r = record_on(
        backend,
        line,
        vcpus,
        "irq",
        opts,
        &["/bin/sh", "-c", &script],
    );
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
    let [read1_in, read1_out, read2_in, read2_out] =
        crate::record_support::two_reads(&r.events, cats[0], cats[1]);
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
    // The kernel's clock event device ticked in the window: the local
    // APIC timer (LOC), or the PIT (irq 0) where the kernel found the
    // local timer unreliable at calibration (seen on the nested KVM).
    let loc = snaps[1][&-1] - snaps[0][&-1];
    let pit = snaps[1].get(&0).copied().unwrap_or(0) - snaps[0].get(&0).copied().unwrap_or(0);
    assert!(
        loc + pit > 0,
        "the timer ticked in the window:\n{}",
        r.console
    );
    for irq in outer.keys() {
        assert!(
            snaps[1].contains_key(irq),
            "traced irq {irq} not in /proc/interrupts"
        );
    }
}

/// Softirqs against the growth of /proc/softirqs between two reads of it
/// (see `record_sched_irq.rs`), on engine `backend` with `opts`.
pub fn softirqs_match_proc_softirqs(backend: &str, opts: &[&str], line: &str, vcpus: u32) {
    // dd: one read(2) per snapshot (busybox cat would sendfile)
    let dd = "dd if=/proc/softirqs bs=65536 count=1 2>/dev/null";
    let script = format!("{dd}; /bin/pingpong 100; {dd}");
    let r = crate::record_support::record_on(
        backend,
        line,
        vcpus,
        "softirqs",
        opts,
        &["/bin/sh", "-c", &script],
    );
    assert_eq!(r.status, 0, "{}", r.console);
    // "      TIMER:   74   99" rows, in vector order (HI is 0), twice
    let rows: Vec<Vec<i64>> = r
        .console
        .lines()
        .filter_map(|l| {
            let (name, counts) = l.trim().split_once(':')?;
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                return None;
            }
            counts.split_whitespace().map(|v| v.parse().ok()).collect()
        })
        .collect();
    assert_eq!(rows.len() % 2, 0, "{}", r.console);
    let vectors = rows.len() / 2;
    assert!(vectors >= 10, "the ten softirqs twice:\n{}", r.console);
    let cats: Vec<i64> = r
        .events
        .iter()
        .filter(|e| e.name == "syscall_entry_openat" && e.text("filename") == "/proc/softirqs")
        .map(|e| e.tid)
        .collect();
    assert_eq!(cats.len(), 2);
    let [in1, out1, in2, out2] = crate::record_support::two_reads(&r.events, cats[0], cats[1]);
    let count = |evs: &[Ev], name: &str| {
        let mut m: BTreeMap<(i64, i64), i64> = BTreeMap::new();
        for e in evs.iter().filter(|e| e.name == name) {
            *m.entry((e.int("vec"), e.cpu)).or_default() += 1;
        }
        m
    };
    let (lo, hi) = (
        count(&r.events[out1..in2], "irq_softirq_entry"),
        count(&r.events[in1..out2], "irq_softirq_entry"),
    );
    let mut total = 0;
    for (vec, (before, after)) in rows[..vectors].iter().zip(&rows[vectors..]).enumerate() {
        assert_eq!(before.len(), vcpus as usize, "a column per CPU");
        for (cpu, (b, a)) in before.iter().zip(after).enumerate() {
            let growth = a - b;
            let key = (vec as i64, cpu as i64);
            let (l, h) = (
                lo.get(&key).copied().unwrap_or(0),
                hi.get(&key).copied().unwrap_or(0),
            );
            assert!(
                l <= growth && growth <= h,
                "softirq {vec} on CPU {cpu}: /proc/softirqs grew {growth}, traced {l} between the reads, {h} including them"
            );
            total += growth;
        }
    }
    assert!(total > 0, "softirqs ran during the workload");
    // Softirqs do not nest on a CPU: from the first exec on (the KVM
    // engine's early boot has 4 hardware breakpoints, not every class; the
    // first syscall comes after the first exec), each entry is followed by
    // its exit, of the same vector, before the CPU's next entry; only the
    // last one of a CPU may still be running when the trace ends.
    let from = r
        .events
        .iter()
        .position(|e| e.name == "sched_process_exec" || e.name.starts_with("syscall_entry_"))
        .expect("an exec or a syscall traced");
    let mut open: BTreeMap<i64, i64> = BTreeMap::new();
    let mut paired = 0;
    for e in &r.events[from..] {
        match e.name.as_str() {
            "irq_softirq_entry" => {
                let prev = open.insert(e.cpu, e.int("vec"));
                assert!(
                    prev.is_none(),
                    "softirq entry without the exit of {prev:?} before it: {e:?}"
                );
            }
            "irq_softirq_exit" => {
                if let Some(v) = open.remove(&e.cpu) {
                    assert_eq!(v, e.int("vec"), "exit of another vector: {e:?}");
                    paired += 1;
                }
            }
            _ => {}
        }
    }
    assert!(paired > 0, "softirq entries and exits after the first exec");
    assert!(r.events.iter().any(|e| e.name == "irq_softirq_raise"));
}
