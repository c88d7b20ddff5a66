//! End-to-end tests of `hvtrace record` (QEMU TCG engine, real kernels):
//! context switches against the kernel's own rusage counters, interrupts
//! against /proc/interrupts, and sample mode.

mod common;
mod record_support;

use record_support::sched_irq::{
    irqs_match_proc_interrupts, pingpong_switches_match_rusage, softirqs_match_proc_softirqs,
    wakeups_pair_with_wakings,
};

use record_support::{babeltrace, Ev};

/// `/bin/pingpong 500` under busybox `time -v` (which reports the wait4
/// rusage of the pair: voluntary + involuntary context switches): the
/// traced switches away from the two processes equal that count, and every
/// switch names real tasks of the guest.
#[test]
fn record_pingpong_6_1() {
    pingpong_switches_match_rusage("qemu", &[], "6.1", 1);
}

#[test]
fn record_pingpong_6_12_two_vcpus() {
    pingpong_switches_match_rusage("qemu", &[], "6.12", 2);
}

/// Interrupts: per device irq, the traced `irq_handler_entry` events (and
/// for the local timer, LOC, `x86_irq_vectors_local_timer_entry`) between
/// two reads of /proc/interrupts equal the growth of its counters.
#[test]
fn record_irqs_6_1() {
    irqs_match_proc_interrupts("qemu", &[], "6.1", 1);
}

#[test]
fn record_irqs_6_12() {
    irqs_match_proc_interrupts("qemu", &[], "6.12", 1);
}

#[test]
fn record_irqs_6_12_two_vcpus() {
    irqs_match_proc_interrupts("qemu", &[], "6.12", 2);
}

/// Softirqs, taken at their tracepoints' static-branch sites: per softirq
/// and per CPU, the `irq_softirq_entry` events between two reads of
/// /proc/softirqs equal the growth of its counters (the kernel counts each
/// one right before its softirq_entry tracepoint), every entry has its
/// exit, and softirqs are raised.
#[test]
fn record_softirqs_match_proc_softirqs_6_1() {
    softirqs_match_proc_softirqs("qemu", &[], "6.1", 1);
}

#[test]
fn record_softirqs_match_proc_softirqs_6_12_two_vcpus() {
    softirqs_match_proc_softirqs("qemu", &[], "6.12", 2);
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
    let [in1, out1, in2, out2] = record_support::two_reads(&r.events, dds[0], dds[1]);
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
